"""`esc_cards`: a card per badge of a registered person. The ESCN is minted offline and recorded
before the Router call, so a crash is recovered without a second card (409 ER-0002 → read back and
reconcile). Lifecycle changes from career and badge data are pushed with PUT."""
# No `from __future__ import annotations`: Dagster inspects the context annotation at runtime.

import datetime as dt
from functools import partial

from dagster import (
    AssetExecutionContext,
    AssetsDefinition,
    MaterializeResult,
    MultiPartitionsDefinition,
    ResourceParam,
    asset,
)
from sqlalchemy import Engine

from etl.assets.claims import claim_partition
from etl.assets.router_calls import ROUTER_POOL, CallReport, calls_check_spec, run_chunks, run_with_client
from etl.assets.step_retries import retry_transient
from etl.config import Ateneo, Settings
from etl.domain.card_plan import CardWork, cards_to_retire, plan_cards
from etl.domain.careers import Rejection
from etl.domain.escn import EscnMinter
from etl.domain.lifecycle import (
    body_hash,
)
from etl.domain.states import QuarantineStage
from etl.domain.sync_outcomes import CardOutcome, SyncResult
from etl.partitions import Partition
from etl.resources.router import RouterClient
from etl.resources.router_clients import RouterClients
from etl.resources.router_errors import RouterAccessDenied, RouterConflict, RouterError, RouterNotFound
from etl.resources.router_views import read_card
from etl.resources.state_db import StateDB
from etl.store import cards as store
from etl.store import quarantine

STAGE = QuarantineStage.CARDS
CHUNK = 1000
OVERLAP = dt.timedelta(minutes=10)


async def sync_card(client: RouterClient, w: CardWork) -> CardOutcome:
    """Create (POST; on ``409 ER-0002`` read the number back: ours → reconcile, anyone else's → a
    fresh number) or update (PUT) one card. Never raises but for errors that stop the run."""

    def confirmed(result: SyncResult) -> CardOutcome:
        return CardOutcome(w.escn, w.bdg_id, result, confirmed=w.target, synced_hash=body_hash(w.body))

    try:
        if not w.create:
            await client.update_card(w.escn, w.put_body)
            return confirmed(SyncResult.UPDATED)
        try:
            await client.create_card(w.body)
            return confirmed(SyncResult.REGISTERED)
        except RouterConflict as e:
            if e.code != "ER-0002":
                raise
        # The number exists: ours from an earlier try whose answer was lost, or (by a clash of
        # numbers, or a card deleted at the Router) not ours: then this badge needs a new number.
        try:
            existing = read_card(await client.get_card(w.escn))
        except (RouterNotFound, RouterAccessDenied):
            return CardOutcome(w.escn, w.bdg_id, SyncResult.REMINTED)
        if not existing.is_ours(w.pic, w.esi):
            return CardOutcome(w.escn, w.bdg_id, SyncResult.REMINTED)
        if w.target_expired and existing.expired(w.today):
            # The Router revives an expired card only with a future expiry, and we want none:
            # it already reads EXPIRED, which is all a verifier needs to know.
            return confirmed(SyncResult.RECONCILED)
        await client.update_card(w.escn, w.put_body)
        return confirmed(SyncResult.RECONCILED)
    except RouterError as e:
        if e.stops_run:
            raise
        # The confirmed Router state is left as it was: only success moves it.
        if e.is_permanent:
            reason = f"Router refused the card: HTTP {e.status} {e.code or ''}".strip()
            return CardOutcome(w.escn, w.bdg_id, SyncResult.FAILED, reason=reason, last_error=reason)
        error = f"Router unavailable: HTTP {e.status}"
        return CardOutcome(w.escn, w.bdg_id, SyncResult.FAILED, last_error=error)


REMINT_ROUNDS = 4  # rounds of calls; a number clash is rare, four in a row means something else


def sync_cards(
    engine: Engine,
    client_factory,
    ateneo: Ateneo,
    partition: Partition,
    report: CallReport,
    today: dt.date | None = None,
) -> None:
    today = today or dt.date.today()
    inst, year = ateneo.code, partition.academic_year
    with engine.begin() as conn:
        clock_seq = store.take_clock_sequence(conn, ateneo.pic)
    minter = EscnMinter(ateneo.pic, ateneo.escn_prefix, clock_seq=clock_seq)

    def record(chunk: list[CardWork]) -> None:  # the intent: minted ESCNs recorded before any call
        with engine.begin() as conn:
            store.record_card_intents(conn, inst, year, chunk)

    reminted = 0

    def confirm(outcomes: list[CardOutcome]) -> None:
        nonlocal reminted
        done = [o for o in outcomes if o.confirmed is not None]
        with engine.begin() as conn:
            store.confirm_cards(conn, done)
            store.record_card_errors(conn, [o for o in outcomes if o.result is SyncResult.FAILED])
            store.forget_card_intents(conn, [o.escn for o in outcomes if o.reminted])
            bad = [Rejection(o.bdg_id, (o.reason,)) for o in outcomes if o.reason]
            quarantine.record(conn, inst, year, STAGE, "P01_BADGE", bad)
            quarantine.resolve(conn, inst, STAGE, "P01_BADGE", (str(o.bdg_id) for o in done))
        reminted += sum(1 for o in outcomes if o.reminted)
        report.counts.update(o.result.value for o in outcomes)
        # retries ran out (a transient failure): the card stays as it was, for the next run
        report.counts["unsent"] += sum(
            1 for o in outcomes if o.result is SyncResult.FAILED and o.reason is None
        )

    with engine.begin() as conn:  # first, cards that stayed with a badge whose career changed person
        retire = cards_to_retire(store.card_candidates(conn, inst, year))
        store.retire_cards(conn, retire)
    report.counts["retired"] = len(retire)

    def plan() -> list[CardWork]:
        with engine.connect() as conn:
            rows = store.card_candidates(conn, inst, year)
            retired = store.retired_cards(conn, inst, year)
        plan = plan_cards(rows, ateneo, minter, today, retired)
        report.counts["waiting_for_person"] = plan.waiting
        report.counts["badge_expired"] = plan.badge_expired
        return plan.work

    async def body(client: RouterClient) -> None:
        nonlocal reminted
        work = first
        for _ in range(REMINT_ROUNDS):
            reminted = 0
            await run_chunks(client, work, CHUNK, record, sync_card, confirm)
            if not reminted:
                return
            work = plan()  # those badges now need a fresh number

    if first := plan():
        run_with_client(client_factory, body, report)


def build_cards_asset(partitions: MultiPartitionsDefinition, settings: Settings) -> AssetsDefinition:
    @asset(
        name="esc_cards",
        partitions_def=partitions,
        deps=["esi_assignments", "badges"],
        group_name="router",
        kinds={"sql"},
        pool=ROUTER_POOL,
        description="A card per badge (ESCN minted offline, PASSIVE or SMART_PASSIVE) at the ESC Router.",
        check_specs=[calls_check_spec("esc_cards")],
    )
    @retry_transient(settings)
    def esc_cards(
        context: AssetExecutionContext, state_db: ResourceParam[StateDB], router: ResourceParam[RouterClients]
    ) -> MaterializeResult:
        partition = Partition.parse(context.partition_key)
        ateneo = settings.ateneo(partition.institution)
        report = CallReport()
        with claim_partition(context, state_db.engine, partition.key):
            sync_cards(state_db.engine, partial(router.of, ateneo.code), ateneo, partition, report)
        context.log.info(f"{partition.key}: {dict(report.counts)}")
        with state_db.engine.connect() as conn:
            cards = store.count_cards(conn, ateneo.code, partition.academic_year)
        return MaterializeResult(
            metadata={
                "dagster/row_count": sum(cards.values()),
                **report.metadata(),
                **{f"cards_{k}": v for k, v in cards.items()},
            },
            check_results=[report.calls_check("esc_cards")],
        )

    return esc_cards
