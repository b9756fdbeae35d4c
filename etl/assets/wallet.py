"""`wallet_passes`: every registered card's Apple pass stored and its Google Wallet object patched when
what they show changed; devices holding a changed Apple pass pushed (etl.wallet.follow). Only in the
definitions when some university issues wallet passes."""
# No `from __future__ import annotations`: Dagster inspects the context annotation at runtime.

import datetime as dt

from dagster import (
    AssetExecutionContext,
    AssetsDefinition,
    MaterializeResult,
    MultiPartitionsDefinition,
    ResourceParam,
    asset,
)

from etl.assets.automation import FOLLOWS_CARDS
from etl.assets.step_retries import retry_transient
from etl.config import Settings
from etl.errors import EscSyncError, ExitCode
from etl.partitions import Partition
from etl.render.logo import load_logo
from etl.resources.state_db import StateDB
from etl.wallet.follow import Wallets, follow_partition


def issues_wallet_passes(settings: Settings) -> bool:
    return any(a.apple_wallet or a.google_wallet for a in settings.atenei)


def build_wallet_asset(partitions: MultiPartitionsDefinition, settings: Settings) -> AssetsDefinition:
    @asset(
        name="wallet_passes",
        partitions_def=partitions,
        automation_condition=FOLLOWS_CARDS,
        deps=["esc_cards", "qr_images"],
        group_name="exports",
        kinds={"python"},
        description="Apple Wallet passes (stored, devices pushed) and Google Wallet objects that follow "
        "the registered cards.",
    )
    @retry_transient(settings)
    def wallet_passes(context: AssetExecutionContext, state_db: ResourceParam[StateDB]) -> MaterializeResult:
        partition = Partition.parse(context.partition_key)
        ateneo = settings.ateneo(partition.institution)
        if ateneo.apple_wallet is None and ateneo.google_wallet is None:
            return MaterializeResult(metadata={"cards": 0, "skipped": "university issues no wallet pass"})
        logo = load_logo(settings.logo_path)
        wallets = Wallets.of(settings, ateneo, logo.data if logo.kind == "png" else None)
        try:
            r = follow_partition(
                state_db.engine, settings.home, partition, ateneo, wallets, settings.qr_base_url,
                dt.date.today(),
            )  # fmt: skip
        finally:
            wallets.close()
        failed = sum(r.failed.values())
        context.log.info(
            f"{partition.key}: {r.cards} card(s), {r.apple_built} Apple pass(es) built, {r.pushed} "
            f"device(s) pushed, {r.google_updated} Google object(s) updated, {r.scrubbed} withdrawn, "
            f"{failed} failed"
        )
        if failed:  # what was done is kept; the step fails so the rest is tried again (never green)
            reason, _ = r.failed.most_common(1)[0]
            message = f"{failed} wallet pass update(s) not delivered ({reason}); a rerun sends them"
            # Google refusing (a 403: the service account not on the issuer) needs a person, not retries.
            raise EscSyncError(message, exit_code=ExitCode.SERVICE, transient=r.refused == 0)
        return MaterializeResult(
            metadata={
                "cards": r.cards,
                "apple_built": r.apple_built,
                "pushed": r.pushed,
                "devices_gone": r.devices_gone,
                "google_updated": r.google_updated,
                "google_not_saved": r.google_not_saved,
                "withdrawn": r.scrubbed,
            }
        )

    return wallet_passes
