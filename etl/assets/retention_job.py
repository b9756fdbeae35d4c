"""The ``personal_data_retention`` job: every night in a deployment, persons whose data is no longer
needed are erased at the Router and at home, and old API audit rows deleted (etl.erasure). Counts
only in the log and the metadata: never a name, a matricola or an ESCN."""

# No `from __future__ import annotations`: Dagster reads the ResourceParam annotation at runtime.
import datetime as dt
from functools import partial

from dagster import (
    DefaultScheduleStatus,
    JobDefinition,
    OpExecutionContext,
    ResourceParam,
    ScheduleDefinition,
    job,
    op,
)

from etl.config import Settings
from etl.erasure import apply_retention
from etl.resources.router_clients import RouterClients
from etl.resources.state_db import StateDB

RETENTION_JOB = "personal_data_retention"


def build_retention_job(settings: Settings) -> tuple[JobDefinition, ScheduleDefinition]:
    @op(description="Erase whose cards all ended [retention] days ago (or who withdrew consent).")
    def erase_due_persons(
        context: OpExecutionContext, state_db: ResourceParam[StateDB], router: ResourceParam[RouterClients]
    ) -> None:
        reports = apply_retention(
            state_db.engine, settings, lambda a: partial(router.of, a.code), dt.date.today()
        )
        for code, r in reports.items():
            context.log.info(
                f"{code}: {r.erased} person(s) erased, {r.cards_deleted} card(s) deleted at the Router, "
                f"{r.unfinished} unfinished" + (f" ({r.busy})" if r.busy else "")
            )
        if any(r.unfinished for r in reports.values()):
            raise RuntimeError("erasures left unfinished (answers lost or partitions busy): run again")

    @job(name=RETENTION_JOB, description="Personal data erased once no longer needed (README).")
    def retention() -> None:
        erase_due_persons()

    schedule = ScheduleDefinition(
        name="nightly_retention",
        job=retention,
        cron_schedule="30 3 * * *",  # after the nightly reconciliation
        default_status=DefaultScheduleStatus.RUNNING if settings.deploy else DefaultScheduleStatus.STOPPED,
    )
    return retention, schedule
