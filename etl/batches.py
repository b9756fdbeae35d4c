"""Batched backfills (issue 25): a university's partitions never read before, several in one run.

A deployment's first sweep (and a new academic year, or a new university) finds every partition new;
one run each pays a run's start, its eight Celery tasks and their events for every partition. A batch
run is one Celery task on a warm worker that runs its partitions one after another, each still as its
own Dagster run of the partitions' job (etl.orchestrate.run_partitions, in that task's process), so
what holds per partition holds here too: the partition's lock for the whole run, the ``esc_router``
pool, its materialisations and checks, and the unfinished_work sensor reading its latest run.

- **Failure isolation**: a partition that fails does not stop the others; the batch then fails with
  one line naming them, and each runs again on its own: the unfinished_work sensor retries a failed
  partition run with backoff, and a partition that never started (busy) is still unread, so the next
  esse3_changes tick asks for it (a university's batch in flight holds its unread partitions back).
- **Crash recovery**: a batch whose worker died is run again (Celery hands its task to another worker,
  or run retries launch it again); partitions that a run of the same batch finished are skipped, a
  partition run left STARTED by the dead process is failed first (etl.orchestrate.reap_dead_runs).
- A single change of a partition already read keeps its own run, within seconds.

The batch job is partitioned by university: the UI backfills whole universities from the job's
partitions page (one run each, all their years) or launches one from its launchpad (a university, the
years in the config, every configured year by default). Either way the run carries the university's
tag, so the per-university run limit counts it.
"""

# No `from __future__ import annotations`: Dagster reads the op's annotations at runtime.
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dagster import (
    DagsterInstance,
    DagsterRunStatus,
    Failure,
    Field,
    JobDefinition,
    OpExecutionContext,
    RunRequest,
    RunsFilter,
    job,
    op,
    static_partitioned_config,
)

from etl.changes import PartitionChange
from etl.config import Settings
from etl.partitions import Partition
from etl.unfinished import ACTIVE, PARTITION_TAG

BATCH_JOB = "esc_sync_batch"
UNIVERSITY_TAG = "esc_sync/university"  # a batch's university (its per-university run limit)
# on every run of the batch job, the launchpad's too: the queue's limit of batches in flight
KIND_TAG, BATCH_KIND = "esc_sync/kind", "batch"
BATCH_TAG = "esc_sync/batch"  # on each partition run of a batch: the batch's first run's id
ROOT_RUN_TAG = "dagster/root_run_id"  # Dagster's, on a run retried from another
BACKFILL_TAG = "dagster/backfill"  # Dagster's: its backfill counts the materialisations of runs that carry it


@dataclass(frozen=True)
class Batch:
    university: str
    changes: tuple[PartitionChange, ...]

    @property
    def years(self) -> list[int]:
        return [c.partition.academic_year for c in self.changes]

    def run_request(self) -> RunRequest:
        # the same partitions' changes, the same key: Dagster launches a batch once, as it does a run
        return RunRequest(
            run_key="batch:" + "+".join(c.run_key for c in self.changes),
            job_name=BATCH_JOB,
            partition_key=self.university,  # the partition's tags come with it (the university's)
            run_config=batch_config(self.years),
        )


def batch_config(years: Sequence[int], assets: Sequence[str] | None = None) -> dict[str, object]:
    config: dict[str, object] = {"academic_years": list(years)}
    if assets is not None:
        config["assets"] = list(assets)
    return {"ops": {"backfill_batch": {"config": config}}}


def backfill_tags(tags: Mapping[str, str]) -> dict[str, str]:
    """The backfill tag of ``tags``, for the runs a run starts on a backfill's behalf."""
    return {BACKFILL_TAG: tags[BACKFILL_TAG]} if BACKFILL_TAG in tags else {}


def batch_years(run_config: Mapping[str, Any]) -> list[int]:
    """A batch run's years, from the run config it was launched with (the launchpad's edits too)."""
    try:
        years = run_config["ops"]["backfill_batch"]["config"]["academic_years"]
    except (KeyError, TypeError):
        return []
    return [int(y) for y in years]


def plan_batches(
    changes: Iterable[PartitionChange], size: int, busy: set[str]
) -> tuple[list[Batch], list[PartitionChange]]:
    """Partitions never read, grouped by university into batches of up to ``size`` (in year order); the
    others (incremental changes, a lone new partition) stay runs of their own. Never-read partitions
    of a university in ``busy`` (a batch of it queued or running) are left to a later tick."""
    singles: list[PartitionChange] = []
    first: dict[str, list[PartitionChange]] = {}
    for c in changes:
        if c.first_read and size > 1:
            first.setdefault(c.partition.institution, []).append(c)
        else:
            singles.append(c)
    batches: list[Batch] = []
    for university, new in sorted(first.items()):
        if university in busy:
            continue  # the batch in flight reads them, or the next tick batches what it left
        new.sort(key=lambda c: c.partition.academic_year)
        for i in range(0, len(new), size):
            chunk = new[i : i + size]
            if len(chunk) == 1:
                singles.append(chunk[0])
            else:
                batches.append(Batch(university, tuple(chunk)))
    return batches, singles


def batches_in_flight(instance: DagsterInstance) -> dict[str, list[Partition]]:
    """University → the partitions of its batches queued or running."""
    out: dict[str, list[Partition]] = {}
    for run in instance.get_runs(RunsFilter(job_name=BATCH_JOB, statuses=list(ACTIVE))):
        if university := run.tags.get(UNIVERSITY_TAG):
            years = batch_years(run.run_config)
            out.setdefault(university, []).extend(Partition(y, university) for y in years)
    return out


def finished_in(instance: DagsterInstance, batch: str) -> set[str]:
    """Keys of the partitions a run of ``batch`` finished."""
    runs = instance.get_runs(RunsFilter(tags={BATCH_TAG: batch}, statuses=[DagsterRunStatus.SUCCESS]))
    return {run.tags[PARTITION_TAG] for run in runs if PARTITION_TAG in run.tags}


def build_batch_job(settings: Settings) -> JobDefinition:
    @static_partitioned_config(
        partition_keys=list(settings.codes), tags_for_partition_key_fn=lambda code: {UNIVERSITY_TAG: code}
    )
    def every_year(_university: str) -> dict[str, object]:
        return batch_config(settings.academic_years)

    @op(
        name="backfill_batch",
        config_schema={
            "academic_years": [int],
            "assets": Field([str], is_required=False, description="the assets to run (default: the job's)"),
        },
    )
    def backfill_batch(context: OpExecutionContext) -> None:
        from etl.definitions import JOB_NAME, build_definitions  # the definitions hold this job
        from etl.orchestrate import PartitionRun, run_partitions
        from etl.partition_job import PARTITION_JOB
        from etl.resources.runtime import Runtime

        if not context.has_partition_key:
            raise Failure("a batch is one university's: launch it with the university as its partition")
        university = context.partition_key
        years = sorted(set(context.op_config["academic_years"]))
        if unknown := [y for y in years if y not in settings.academic_years]:
            raise Failure(f"academic year(s) {unknown} not configured ({settings.academic_years})")
        partitions = [Partition(y, university) for y in years]
        batch = context.run.tags.get(ROOT_RUN_TAG, context.run_id)
        done = finished_in(context.instance, batch)
        todo = [p for p in partitions if p.key not in done]
        # Systems of its own, not the job's resources: a job needing resources would make Dagster
        # rebuild the sensor that targets it, with a beta warning in every process that loads it.
        runtime = Runtime(settings)
        assets = context.op_config.get("assets")
        try:
            outcome = run_partitions(
                build_definitions(settings, runtime), context.instance, todo, lock_engine=runtime.engine,
                tags={BATCH_TAG: batch, **backfill_tags(context.run.tags)}, isolate_failures=True,
                assets=assets, job_name=PARTITION_JOB if assets is None else JOB_NAME,
                progress=lambda i, n, o: context.log.info(
                    f"{o.partition.key}: {'done' if isinstance(o, PartitionRun) else 'failed'} ({i} of {n})"
                ),
            )  # fmt: skip
        finally:
            runtime.dispose()
        context.log.info(
            f"{university}: {len(outcome.runs)} partition(s) run, {len(partitions) - len(todo)} finished "
            f"before, {len(outcome.failures)} failed"
        )
        if outcome.failures:
            failed = ", ".join(f.partition.key for f in outcome.failures)
            raise Failure(
                f"{len(outcome.failures)} of {len(todo)} partition(s) failed ({failed}): each runs again on "
                f"its own (the sensors); first: {outcome.failures[0].message}"
            )

    @job(
        name=BATCH_JOB,
        description="A university's partitions, one after another in one run (a backfill)",
        tags={KIND_TAG: BATCH_KIND},
        config=every_year,
    )
    def esc_sync_batch() -> None:
        backfill_batch()

    return esc_sync_batch
