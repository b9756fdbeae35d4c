"""`esi_assignments`: every finalised career's person gets an ESI, registered at the ESC Router and
written back onto the Esse3 career. Intent first (the ESI, committed), then the call, then the
confirmation: a crash anywhere is recovered by re-running (409 ER-0019 → read back and adopt)."""
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
from etl.domain.careers import Rejection
from etl.domain.esi import EsiWriteBack, same_esi
from etl.domain.person_plan import ESI_CONFLICT, PersonWork, plan_persons
from etl.domain.states import QuarantineStage, SyncState
from etl.domain.sync_outcomes import PersonOutcome, SyncResult
from etl.partitions import Partition
from etl.resources.esse3 import Esse3Source
from etl.resources.esse3_sources import Esse3Sources
from etl.resources.router import RouterClient
from etl.resources.router_clients import RouterClients
from etl.resources.router_errors import RouterConflict, RouterError
from etl.resources.router_views import person_identifier
from etl.resources.state_db import StateDB
from etl.store import persons as store
from etl.store import quarantine
from etl.store.bulk import refresh_statistics

STAGE = QuarantineStage.ESI
CHUNK = 1000  # persons per intent/call/confirm round: bounds what a crash can leave pending


async def sync_person(client: RouterClient, w: PersonWork) -> PersonOutcome:
    def done(result: SyncResult) -> PersonOutcome:
        return PersonOutcome(w.esi, w.stu_id, SyncState.REGISTERED, result, w.body_hash)

    def refused(reason: str) -> PersonOutcome:  # for good: quarantined
        return PersonOutcome(w.esi, w.stu_id, SyncState.FAILED, SyncResult.FAILED, None, reason=reason)

    try:
        if not w.create:
            await client.update_person(w.esi, w.body)
            return done(SyncResult.UPDATED)
        try:
            await client.create_person(w.body)
            return done(SyncResult.REGISTERED)
        except RouterConflict as e:
            if e.code != "ER-0019":
                raise
        # Already there for our organisation (an earlier try whose answer was lost): adopt it
        # if it is the same identifier, then make our relation match what we would have sent.
        held = person_identifier(await client.get_person(w.esi))
        if held is None or not same_esi(held, w.esi):
            return refused("ER-0019 but the Router holds another identifier")
        await client.update_person(w.esi, w.body)
        return done(SyncResult.ADOPTED)
    except RouterError as e:
        if e.stops_run:
            raise
        if e.is_permanent:
            return refused(f"Router refused the person: HTTP {e.status} {e.code or ''}".strip())
        # Transient (retries exhausted): stays as it was, retried by the next run.
        state = SyncState.PENDING if w.create else SyncState.REGISTERED
        error = f"Router unavailable: HTTP {e.status}"
        return PersonOutcome(w.esi, w.stu_id, state, SyncResult.FAILED, None, last_error=error)


def assign_esis(
    engine: Engine,
    source: Esse3Source,
    client_factory,
    ateneo: Ateneo,
    partition: Partition,
    report: CallReport,
) -> None:
    with engine.connect() as conn:
        rows = store.person_candidates(conn, ateneo.code, partition.academic_year)
        plan = plan_persons(rows, ateneo, store.source_esis(conn, ateneo.code, partition.academic_year))
    year = partition.academic_year
    with engine.begin() as conn:
        store.record_person_intents(conn, ateneo.code, plan.opted_out)
        quarantine.record(conn, ateneo.code, year, STAGE, "P01_STU", plan.rejections)
        quarantine.resolve(conn, ateneo.code, STAGE, "P01_STU", map(str, plan.fine))
    report.counts.update(
        opted_out=len(plan.opted_out), quarantined=len(plan.rejections), not_eligible=plan.not_eligible
    )

    def record(chunk: list[PersonWork]) -> None:  # the intent: the deterministic ESI, before any call
        with engine.begin() as conn:
            store.record_person_intents(
                conn,
                ateneo.code,
                [(w.pers_id, w.person_key, w.esi, SyncState.PENDING) for w in chunk if w.create],
            )

    def confirm(outcomes: list[PersonOutcome]) -> None:
        with engine.begin() as conn:
            store.confirm_persons(conn, ateneo.code, outcomes)
            bad = [Rejection(o.stu_id, (o.reason,)) for o in outcomes if o.reason]
            quarantine.record(conn, ateneo.code, year, STAGE, "P01_STU", bad)
            ok = [str(o.stu_id) for o in outcomes if o.state is SyncState.REGISTERED]
            quarantine.resolve(conn, ateneo.code, STAGE, "P01_STU", ok)
        report.counts.update(o.result.value for o in outcomes)
        report.counts["unsent"] += sum(1 for o in outcomes if o.last_error)  # retries ran out: pending

    async def body(client: RouterClient) -> None:
        await run_chunks(client, plan.work, CHUNK, record, sync_person, confirm)

    if plan.work:
        run_with_client(client_factory, body, report)
    # the persons this partition recorded, for the next steps' plans
    refresh_statistics(engine, "persons", written=sum(1 for w in plan.work if w.create))
    write_back(engine, source, ateneo.code, year, report)


def write_back(engine: Engine, source: Esse3Source, institution: str, year: int, report: CallReport) -> None:
    """Store registered ESIs on their Esse3 careers; a career already holding another ESI is
    quarantined, never overwritten, unless esc-sync wrote that ESI itself (the career changed person)."""
    with engine.connect() as conn:
        rows = store.write_back_candidates(conn, institution, year)
    conflicts = [Rejection(r.stu_id, (ESI_CONFLICT,)) for r in rows if not r.ours_to_write]
    writes = [EsiWriteBack(r.stu_id, r.esi, r.esi_written) for r in rows if r.ours_to_write]
    source.write_back_esi(writes)  # Esse3 first: if we crash before the next line, it is redone
    with engine.begin() as conn:
        store.mark_written_back(conn, institution, [(w.stu_id, w.esi) for w in writes])
        refresh_statistics(conn, "careers", written=len(writes))
        quarantine.record(conn, institution, year, STAGE, "P01_STU", conflicts)
    report.counts.update(written_back=len(writes), quarantined=len(conflicts))


def build_esi_asset(partitions: MultiPartitionsDefinition, settings: Settings) -> AssetsDefinition:
    @asset(
        name="esi_assignments",
        partitions_def=partitions,
        deps=["careers"],
        group_name="router",
        kinds={"sql"},
        pool=ROUTER_POOL,
        description="ESIs of finalised careers, registered at the ESC Router and written back to Esse3.",
        check_specs=[calls_check_spec("esi_assignments")],
    )
    @retry_transient(settings)
    def esi_assignments(
        context: AssetExecutionContext,
        state_db: ResourceParam[StateDB],
        esse3: ResourceParam[Esse3Sources],
        router: ResourceParam[RouterClients],
    ) -> MaterializeResult:
        partition = Partition.parse(context.partition_key)
        ateneo = settings.ateneo(partition.institution)
        report = CallReport()
        started = dt.datetime.now()
        with claim_partition(context, state_db.engine, partition.key):
            assign_esis(
                state_db.engine,
                esse3.of(ateneo.code),
                partial(router.of, ateneo.code),
                ateneo,
                partition,
                report,
            )
        context.log.info(f"{partition.key}: {dict(report.counts)} in {dt.datetime.now() - started}")
        with state_db.engine.connect() as conn:
            registered = store.count_persons(conn, ateneo.code, partition.academic_year)
        return MaterializeResult(
            metadata={"dagster/row_count": registered, **report.metadata()},
            check_results=[report.calls_check("esi_assignments")],
        )

    return esi_assignments
