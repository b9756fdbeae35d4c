"""The ``router_matches_local`` asset check: the Router walked for every university and compared with
the state DB (etl.reconcile), reporting drift in counts (nothing personal). It repairs nothing: the
repairs are `esc-sync reconcile --repair`'s, run by an operator who has read the report."""

# No `from __future__ import annotations`: Dagster reads the ResourceParam annotation at runtime.
from dagster import (
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSeverity,
    MetadataValue,
    ResourceParam,
    asset_check,
)

from etl.config import Settings
from etl.reconcile import reconcile
from etl.resources.esse3_sources import Esse3Sources
from etl.resources.router_clients import RouterClients
from etl.resources.runtime import Runtime
from etl.resources.state_db import StateDB
from etl.sweep import TABLES, sweep

CHECK_NAME = "router_matches_local"
SWEEP_CHECK = "esse3_matches_local"


def build_reconcile_check(settings: Settings) -> AssetChecksDefinition:
    @asset_check(
        asset="esc_cards",
        name=CHECK_NAME,
        blocking=False,
        description="Every university's persons and cards at the Router are the ones the state DB "
        "registered, with the status and expiry it confirmed (etl.domain.reconcile).",
    )
    def router_matches_local(
        state_db: ResourceParam[StateDB], router: ResourceParam[RouterClients]
    ) -> AssetCheckResult:
        runtime = Runtime(settings, state_db=state_db, router_clients=router)
        results = reconcile(runtime, settings.codes, repair=False)
        metadata: dict[str, MetadataValue] = {}
        for r in results:
            if r.drift is None:
                metadata[f"{r.institution}/error"] = MetadataValue.text(r.error or "")
                continue
            for kind, n in r.drift.counts().items():
                metadata[f"{r.institution}/{kind}"] = MetadataValue.int(n)
        drifted = [r.institution for r in results if r.drift is None or any(r.drift.counts().values())]
        metadata["universities_with_drift"] = MetadataValue.text(", ".join(drifted) or "none")
        return AssetCheckResult(passed=not drifted, severity=AssetCheckSeverity.WARN, metadata=metadata)

    return router_matches_local


def build_sweep_check(settings: Settings) -> AssetChecksDefinition:
    @asset_check(
        asset="careers",
        name=SWEEP_CHECK,
        blocking=False,
        description="Every university's Esse3 careers, persons and badges compared with the state DB by key "
        "and digest (etl.sweep). What the DATA_MOD window missed (late commits, deletions, year moves) "
        "is recorded for the partitions' next runs, which the esse3_changes sensor launches.",
    )
    def esse3_matches_local(
        state_db: ResourceParam[StateDB], esse3: ResourceParam[Esse3Sources]
    ) -> AssetCheckResult:
        runtime = Runtime(settings, state_db=state_db, esse3_sources=esse3)
        results = sweep(runtime, settings.codes, record=True)
        metadata: dict[str, MetadataValue] = {}
        for r in results:
            if r.error:
                metadata[f"{r.institution}/error"] = MetadataValue.text(r.error)
                continue
            for table in TABLES:
                for kind, n in r.count(table).items():
                    metadata[f"{r.institution}/{table}/{kind}"] = MetadataValue.int(n)
        drifted = [r.institution for r in results if r.error or r.total]
        metadata["universities_with_drift"] = MetadataValue.text(", ".join(drifted) or "none")
        return AssetCheckResult(passed=not drifted, severity=AssetCheckSeverity.WARN, metadata=metadata)

    return esse3_matches_local
