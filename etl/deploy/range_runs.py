"""Dagster's asset backfills (*Materialize → partitions* in the UI, the automation sensor's multi-partition
requests) handed to batches (etl.batches).

In a deployment the partitioned assets carry ``BackfillPolicy.multi_run(batch_partitions)``, so an asset
backfill asks for *range runs*: one run for up to that many partitions, where Dagster would otherwise
start a run per partition. Our assets run one partition at a time (each partition's lock, its checks, its
latest run read by the unfinished_work sensor), so a range run does not execute its steps: its executor
queues batch runs of its universities' years (the batch job's, on the workers) and ends. The batches
carry the asset backfill's tag, and so do their partition runs, which is how Dagster's backfill counts
their materialisations and failures. A range run ends only once its batches are queued: until every
partition is accounted for, the backfill always has a run of its own not finished (a range run, or a
batch), and so never takes itself for stalled.

Dagster groups a multi-partition backfill by whichever dimension has fewer keys in it (the year on a tie):
a backfill of as many universities as years or more comes in ranges of one year across universities. So
a range run does not hand off just its own partitions: of each university in it, the backfill's years in
batches, each batch queued by the range run holding its first year (``owned_batches``); the others end
having handed nothing for that university.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from functools import partial

from dagster import (
    AssetKey,
    DagsterInstance,
    DagsterRunStatus,
    PartitionKeyRange,
    RepositoryDefinition,
    RunsFilter,
)
from dagster._core.events import DagsterEvent, EngineEventData
from dagster._core.execution.context.system import PlanOrchestrationContext
from dagster._core.execution.plan.plan import ExecutionPlan
from dagster._core.executor.base import Executor
from dagster._core.storage.dagster_run import DagsterRun
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
    PARTITION_NAME_TAG,
)
from dagster._record import copy

from etl.batches import (
    BACKFILL_TAG,
    BATCH_JOB,
    ROOT_RUN_TAG,
    UNIVERSITY_TAG,
    backfill_tags,
    batch_config,
    batch_years,
)
from etl.definitions import JOB_NAME
from etl.partitions import Partition

HANDED_FROM_TAG = "esc_sync/handed_from"  # on a batch: the range run (its first attempt) it came from


def is_range_run(tags: Mapping[str, str]) -> bool:
    return ASSET_PARTITION_RANGE_START_TAG in tags and PARTITION_NAME_TAG not in tags


def by_university(partitions: Iterable[Partition]) -> dict[str, list[int]]:
    """University → its years among ``partitions``, in order, once each."""
    out: dict[str, list[int]] = {}
    for p in sorted(set(partitions), key=lambda p: (p.institution, p.academic_year)):
        out.setdefault(p.institution, []).append(p.academic_year)
    return out


def owned_batches(
    in_range: Sequence[Partition], targeted: Sequence[Partition], size: int
) -> dict[str, list[list[int]]]:
    """University of the range → the batches this range run hands off: the backfill's years of that
    university in chunks of ``size``, each chunk handed by the range run that holds its first year. So a
    backfill Dagster ranged by year (across universities) still makes batches of each university's years;
    a university whose chunks start in other range runs maps to none."""
    every = by_university([*targeted, *in_range])
    out: dict[str, list[list[int]]] = {}
    for university, years in by_university(in_range).items():
        all_years = every[university]
        chunks = [all_years[i : i + size] for i in range(0, len(all_years), size)]
        out[university] = [chunk for chunk in chunks if chunk[0] in years]
    return out


def hand_off(instance: DagsterInstance, run: DagsterRun, repository: RepositoryDefinition) -> Iterator[str]:
    """Queue the batch runs the range run ``run`` owns (``owned_batches``); yields a line per university."""
    # Dagster's backfills run its implicit asset job: the partitions' job says what the range and "all" are
    job = repository.get_job(JOB_NAME)
    assert job.partitions_def is not None and run.remote_job_origin and run.job_code_origin
    keys = job.partitions_def.get_partition_keys_in_range(
        PartitionKeyRange(run.tags[ASSET_PARTITION_RANGE_START_TAG], run.tags[ASSET_PARTITION_RANGE_END_TAG])
    )
    in_range = [Partition.parse(k) for k in keys]
    every_asset = job.asset_layer.selected_asset_keys
    selection = run.asset_selection or every_asset
    assets = None if selection == every_asset else sorted(k.to_user_string() for k in selection)
    key = min(selection)
    policy = repository.asset_graph.get(key).backfill_policy
    size = (policy.max_partitions_per_run if policy else None) or len(keys)
    batch_job = repository.get_job(BATCH_JOB)
    assert batch_job.partitioned_config is not None
    partition_tags = partial(batch_job.partitioned_config.get_tags_for_partition_key, job_name=BATCH_JOB)
    origin = run.tags.get(ROOT_RUN_TAG, run.run_id)  # a retried range run hands off what its first did not
    handed = {
        (r.tags.get(UNIVERSITY_TAG), tuple(batch_years(r.run_config)))
        for r in instance.get_runs(RunsFilter(job_name=BATCH_JOB, tags={HANDED_FROM_TAG: origin}))
    }
    targeted = _targeted(instance, run, repository, key)
    for university, chunks in owned_batches(in_range, targeted, size).items():
        if not chunks:
            yield f"{university}: its years go with another range run of the backfill"
        for years in chunks:
            if (university, tuple(years)) in handed:
                yield f"{university}: {years} handed to a batch before"
                continue
            batch = instance.create_run_for_job(
                batch_job,
                run_config=batch_config(years, assets),
                status=DagsterRunStatus.NOT_STARTED,
                tags={  # the batch job's own tags and its university partition's, as the UI launches it
                    **batch_job.tags,
                    **partition_tags(university),
                    HANDED_FROM_TAG: origin,
                    **backfill_tags(run.tags),
                },
                remote_job_origin=copy(run.remote_job_origin, job_name=BATCH_JOB),
                job_code_origin=run.job_code_origin._replace(job_name=BATCH_JOB),
            )
            instance.submit_run(batch.run_id, workspace=None)  # type: ignore[arg-type]  # the queue needs none
            yield f"{university}: {len(years)} partition(s) handed to batch run {batch.run_id}"


def _targeted(
    instance: DagsterInstance, run: DagsterRun, repository: RepositoryDefinition, key: AssetKey
) -> list[Partition]:
    """The partitions of ``key`` the run's asset backfill targets (none known: a run of no backfill)."""
    backfill = instance.get_backfill(run.tags[BACKFILL_TAG]) if BACKFILL_TAG in run.tags else None
    if backfill is None or not backfill.is_asset_backfill:
        return []
    subset = backfill.get_asset_backfill_data(repository.asset_graph).get_target_partitions_subset(key)
    return [Partition.parse(k) for k in subset.get_partition_keys()]


class HandsOffRanges(Executor):
    """Mixed into an executor: its steps run as it runs them, except a range run's, handed to batches."""

    def execute(
        self, plan_context: PlanOrchestrationContext, execution_plan: ExecutionPlan
    ) -> Iterator[DagsterEvent]:
        run = plan_context.dagster_run
        if not is_range_run(run.tags):
            yield from super().execute(plan_context, execution_plan)  # type: ignore[safe-super]
            return
        repository = plan_context.reconstructable_job.repository.get_definition()
        for line in hand_off(plan_context.instance, run, repository):
            yield DagsterEvent.engine_event(plan_context, line, EngineEventData())
