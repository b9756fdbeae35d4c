"""The one Dagster `Definitions`: assets, checks, the change-data sensor, jobs and resources.

`dagster dev -w workspace.yaml` loads `defs` from here; configuration comes from ESC_SYNC_CONFIG /
ESC_SYNC_HOME like every other command. The assets receive the systems they speak to as three
resources: ``state_db``, ``esse3`` and ``router`` (etl.resources)."""

# No `from __future__ import annotations`: Dagster reads the sensors' annotations at runtime.
import os
from collections.abc import Mapping

from dagster import (
    AssetSelection,
    AutomationConditionSensorDefinition,
    BackfillPolicy,
    DagsterInstance,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    Definitions,
    ExecutorDefinition,
    RunRequest,
    ScheduleDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    define_asset_job,
    definitions,
    in_process_executor,
    sensor,
)

from etl import unfinished
from etl.assets.badge_write_back import build_badge_write_back_asset
from etl.assets.badges import build_badges_asset
from etl.assets.cards import build_cards_asset
from etl.assets.careers import build_careers_asset
from etl.assets.esi import build_esi_asset
from etl.assets.exports import build_export_asset
from etl.assets.prints import build_prints_asset
from etl.assets.qr import build_qr_asset
from etl.assets.reconcile_check import build_reconcile_check, build_sweep_check
from etl.assets.retention_job import build_retention_job
from etl.assets.wallet import build_wallet_asset, issues_wallet_passes
from etl.batches import UNIVERSITY_TAG, batches_in_flight, build_batch_job, plan_batches
from etl.changes import pending_partitions
from etl.config import DeploySettings, Settings, load_settings
from etl.deploy.executor import steps_in_run
from etl.deploy.kept_instance import kept_instance
from etl.domain.retries import run_key as retry_run_key
from etl.partition_job import PARTITION_JOB, build_partition_job
from etl.partitions import Partition, partitions_def
from etl.resources.runtime import Runtime

JOB_NAME = "esc_sync"
RECONCILE_JOB = "router_reconciliation"
PARTITION_RUN_JOBS = (JOB_NAME, PARTITION_JOB)  # the jobs whose runs are one partition's
UNFINISHED_INTERVAL_S = 30  # how often the unfinished_work sensor looks (a few indexed queries)


def sensor_instance(context: SensorEvaluationContext) -> DagsterInstance:
    """The Dagster instance the sensors read: the process's own (etl.deploy.kept_instance), not one
    built anew at every tick. Dagster builds that one only for a sensor that takes resources, which
    ours therefore do not: they use the definitions' own systems."""
    if context.instance_ref is None:  # a context built around an instance (tests)
        return context.instance
    return kept_instance(context.instance_ref)


def partitions_in_flight(instance: DagsterInstance, batches: Mapping[str, list[Partition]]) -> set[str]:
    """Keys of the partitions with a run queued or in progress, or in ``batches`` (those in flight)."""
    return unfinished.active_partitions(instance, *PARTITION_RUN_JOBS) | {
        p.key for batch in batches.values() for p in batch
    }


def build_definitions(settings: Settings, runtime: Runtime | None = None) -> Definitions:
    partitions = partitions_def(settings)
    assets = [
        build(partitions, settings)
        for build in (
            build_careers_asset,
            build_esi_asset,
            build_badges_asset,
            build_cards_asset,
            build_qr_asset,
            build_badge_write_back_asset,
            build_export_asset,
            build_prints_asset,
            *((build_wallet_asset,) if issues_wallet_passes(settings) else ()),
        )
    ]
    checks = [build_sweep_check(settings), build_reconcile_check(settings)]
    runtime = runtime or Runtime(settings)
    # The partitions' job leaves the source sweep and the Router walk out: they have their own job,
    # nightly in a deployment (the sweep first: what it finds is the next runs' work).
    job = define_asset_job(
        JOB_NAME, selection=AssetSelection.all() - AssetSelection.checks(*checks), partitions_def=partitions
    )
    reconcile_job = define_asset_job(RECONCILE_JOB, selection=AssetSelection.checks(*checks))
    batch_job = build_batch_job(settings)
    partition_job = build_partition_job(assets, partitions)  # a batch's partitions run as this
    deploy = settings.deploy
    incremental_in_run = deploy is not None and deploy.executor == "celery"
    if deploy is not None and incremental_in_run and deploy.batch_partitions > 1:
        # an asset backfill asks for a run per that many partitions, which the executor hands to batches
        policy = BackfillPolicy.multi_run(deploy.batch_partitions)
        assets = [a.with_attributes(backfill_policy=policy) for a in assets]
    batch_size = deploy.batch_partitions if deploy else 1

    @sensor(
        name="esse3_changes",
        jobs=[job, batch_job],
        minimum_interval_seconds=deploy.sensor_interval_s if deploy else 60,
        # a deployment watches Esse3 from the start; `esc-sync ui` leaves it to be switched on
        default_status=DefaultSensorStatus.RUNNING if deploy else DefaultSensorStatus.STOPPED,
    )
    def esse3_changes(context: SensorEvaluationContext) -> SensorResult | SkipReason:
        """Thin by design (60 s tick deadline): one aggregate query per university, then run
        requests for the partitions whose Esse3 data is newer than our watermark; partitions never
        read go in batches of a university's years (etl.batches)."""
        # one university's Esse3 down (its one-line reason logged) leaves the others' changes going
        changes = pending_partitions(settings, runtime, on_error=lambda e: context.log.warning(str(e)))
        instance = sensor_instance(context)
        in_flight = batches_in_flight(instance)
        batches, singles = plan_batches(changes, batch_size, set(in_flight))
        # a partition whose run is queued or in progress reads what changed when it runs; what changes
        # after its read, the next tick after it ends finds (between its careers and badges steps it
        # looks changed: no second run for that)
        busy = partitions_in_flight(instance, in_flight)
        singles = [c for c in singles if c.partition.key not in busy]
        requests = [batch.run_request() for batch in batches] + [
            RunRequest(
                run_key=change.run_key,
                job_name=JOB_NAME,
                partition_key=change.partition.dagster_key(),
                # an incremental change carries a few careers: cheaper in its run's process than on workers
                run_config=steps_in_run() if incremental_in_run and not change.first_read else {},
                tags={UNIVERSITY_TAG: change.partition.institution},
            )
            for change in singles
        ]
        if not requests:
            return SkipReason("no Esse3 changes beyond the watermarks, or only of partitions being run")
        return SensorResult(run_requests=requests)

    @sensor(
        name="unfinished_work",
        job=job,
        minimum_interval_seconds=UNFINISHED_INTERVAL_S,
        default_status=DefaultSensorStatus.RUNNING if deploy else DefaultSensorStatus.STOPPED,
    )
    def unfinished_work(context: SensorEvaluationContext) -> SensorResult | SkipReason:
        """Partitions with work left undone (Router calls whose retries ran out, a run that failed or
        was cancelled) run again, with backoff, a bounded number of times (etl.unfinished)."""
        instance = sensor_instance(context)
        failed = unfinished.latest_unsuccessful(instance, *PARTITION_RUN_JOBS)
        busy = partitions_in_flight(instance, batches_in_flight(instance))
        with runtime.engine.begin() as conn:
            found = unfinished.partitions_with_work(conn, settings, failed)
            due, given_up = unfinished.schedule(conn, found, busy)
        for r in given_up:  # counts and keys only
            context.log.warning(
                f"{r.work.partition.key}: still {r.work.reason} after {r.state.attempts} attempts: "
                "left for a person (`esc-sync reconcile`, `esc-sync sync`)"
            )
        for r in due:
            context.log.info(f"{r.work.partition.key}: attempt {r.state.attempts} ({r.work.reason})")
        if not due:
            return SkipReason(
                f"{len(found)} partition(s) with work left, none due now" if found else "nothing left"
            )
        return SensorResult(
            run_requests=[
                RunRequest(
                    run_key=retry_run_key(r.work.partition.key, r.state),
                    partition_key=r.work.partition.dagster_key(),
                    tags={
                        unfinished.RETRY_TAG: str(r.state.attempts),
                        UNIVERSITY_TAG: r.work.partition.institution,
                    },
                )
                for r in due
            ]
        )

    follow_cards = AutomationConditionSensorDefinition(
        "exports_follow_cards",
        target=AssetSelection.all(),  # acts on the assets with a condition (etl.assets.automation)
        # not on the hot path (the job's runs rebuild them), and an evaluation costs a few CPU seconds
        minimum_interval_seconds=60,
        default_status=DefaultSensorStatus.RUNNING if deploy else DefaultSensorStatus.STOPPED,
    )

    nightly = ScheduleDefinition(
        name="nightly_reconciliation",
        job=reconcile_job,
        cron_schedule="30 2 * * *",  # after the night's backfills, before the offices open
        default_status=DefaultScheduleStatus.RUNNING if deploy else DefaultScheduleStatus.STOPPED,
    )

    retention_job, nightly_retention = build_retention_job(settings)
    return Definitions(
        assets=assets,
        asset_checks=checks,
        jobs=[job, batch_job, partition_job, reconcile_job, retention_job],
        schedules=[nightly, nightly_retention],
        sensors=[esse3_changes, unfinished_work, follow_cards],
        resources=runtime.resources(),
        executor=executor_for(deploy),
    )


def executor_for(deploy: DeploySettings | None) -> ExecutorDefinition | None:
    """Dagster's default (multiprocess) unless a deployment names one; Celery sends each step to
    `esc-sync worker` processes, on this machine or others."""
    if deploy is None or deploy.executor == "multiprocess":
        return None
    if deploy.executor == "in_process":
        return in_process_executor
    from etl.deploy.executor import celery_or_in_run

    return celery_or_in_run


@definitions
def defs() -> Definitions:
    """What `dagster dev`, the daemon, the code server and the workers load (the workspace's attribute
    ``defs``), built when they load it: importing this module (tests, tools) needs no config file."""
    os.umask(0o077)  # loaded by the daemon and the workers: what they write stays private too
    return build_definitions(load_settings())
