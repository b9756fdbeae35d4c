"""The partition job: a partition's assets in two steps, the job a batch runs each of its partitions as.

The asset job's run of a partition costs Dagster ~0.4 CPU-s whatever the partition's size (issue 25,
docs/performance.md): eight steps, each with its start, output and success events and its inputs' data
versions read, 68 events in all. A batch's partitions are new and run one after another in one
process, so nothing is gained there by a step each: this job runs the same assets' functions, in the
graph's order, in two steps, and records what the asset job would (each asset's materialisation with
its metadata, each check's evaluation, the materialisations planned when the run starts, so that the
automation sees the partition in progress). The first step ends with the last asset that calls the
Router and holds an ``esc_router`` pool slot; the second (QR images, exports, write-back) holds none.

Everything else a partition run is stays: its own Dagster run (tags, status, the unfinished_work
sensor's view), its lock, its step retries on a transient failure (the step again, from its first
asset: each is idempotent)."""

# No `from __future__ import annotations`: Dagster reads the ops' annotations at runtime.
import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from graphlib import TopologicalSorter

from dagster import (
    AssetCheckEvaluation,
    AssetCheckKey,
    AssetCheckResult,
    AssetKey,
    AssetMaterialization,
    AssetRecordsFilter,
    AssetsDefinition,
    DagsterInstance,
    EventLogRecord,
    In,
    JobDefinition,
    MaterializeResult,
    MultiPartitionsDefinition,
    Nothing,
    OpExecutionContext,
    Out,
    job,
    op,
)
from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluationTargetMaterializationData,
)
from dagster._core.events import (
    AssetMaterializationPlannedData,
    DagsterEvent,
    DagsterEventBatchMetadata,
    generate_event_batch_id,
)
from dagster._core.log_manager import DagsterLogManager

from etl.assets.router_calls import ROUTER_POOL

PARTITION_JOB = "esc_sync_partition"
CHAIN_STEP = "router_chain"  # the first step, which records the run's planned materialisations


@dataclass(frozen=True)
class StepContext:
    """What the assets' functions read of their Dagster context, for one asset of a step running several."""

    partition_key: str
    run_id: str
    instance: DagsterInstance
    log: DagsterLogManager
    retry_number: int


def in_graph_order(assets: Sequence[AssetsDefinition]) -> list[AssetsDefinition]:
    """Level by level, by name within a level: the order the asset job's run executes its steps in
    (badges right after careers, before the ESIs' Router calls: until its badges are read a partition
    looks changed to the esse3_changes sensor)."""
    by_key = {a.key: a for a in assets}
    sorter = TopologicalSorter({a.key: {d for d in a.asset_deps[a.key] if d in by_key} for a in assets})
    sorter.prepare()
    ordered: list[AssetsDefinition] = []
    while sorter.is_active():
        level = sorted(sorter.get_ready(), key=lambda k: k.to_user_string())
        ordered += [by_key[k] for k in level]
        sorter.done(*level)
    return ordered


def split_at_router(
    assets: Sequence[AssetsDefinition],
) -> tuple[list[AssetsDefinition], list[AssetsDefinition]]:
    """The assets up to the last that calls the Router, and the rest."""
    ordered = in_graph_order(assets)
    last = max((i for i, a in enumerate(ordered) if a.op.pool == ROUTER_POOL), default=-1)
    return ordered[: last + 1], ordered[last + 1 :]


def check_evaluation(
    asset: AssetsDefinition, result: AssetCheckResult, partition: str, target: EventLogRecord
) -> AssetCheckEvaluation:
    """The evaluation the asset job records for ``result``, targeting ``target``: the partition's
    materialisation just recorded, as Dagster's own steps do."""
    key = AssetCheckKey(result.asset_key or asset.key, str(result.check_name))
    spec = asset.get_spec_for_check_key(key)
    return AssetCheckEvaluation(
        asset_key=key.asset_key,
        check_name=key.name,
        passed=result.passed,
        metadata=result.metadata,
        target_materialization_data=AssetCheckEvaluationTargetMaterializationData(
            storage_id=target.storage_id, run_id=target.run_id, timestamp=target.timestamp
        ),
        severity=result.severity,
        description=result.description,
        blocking=spec.blocking,
        partition=partition if spec.partitions_def is not None else None,
    )


def run_assets(context: OpExecutionContext, assets: Sequence[AssetsDefinition]) -> None:
    step = StepContext(
        context.partition_key, context.run_id, context.instance, context.log, context.retry_number
    )
    for asset in assets:
        fn = asset.op.compute_fn.decorated_fn  # type: ignore[union-attr]  # the asset's own function
        names = list(inspect.signature(fn).parameters)[1:]  # after the context: its resources
        result = fn(step, **{name: getattr(context.resources, name) for name in names})
        if not isinstance(result, MaterializeResult):
            raise TypeError(f"{asset.key.to_user_string()} returned a {type(result).__name__}")
        made = AssetMaterialization(asset.key, partition=step.partition_key, metadata=result.metadata)
        context.log_event(made)
        if not result.check_results:
            continue
        [target] = context.instance.fetch_materializations(
            AssetRecordsFilter(asset_key=asset.key, asset_partitions=[step.partition_key]), limit=1
        ).records
        for check in result.check_results:
            # log_event records check evaluations too; its annotation leaves them out
            evaluation = check_evaluation(asset, check, step.partition_key, target)
            context.log_event(evaluation)  # type: ignore[arg-type]


def plan_materializations(context: OpExecutionContext, keys: Sequence[AssetKey]) -> None:
    """The planned events the asset job's run records at its creation, in one batch as Dagster does:
    the automation takes a partition planned in a run in flight for in progress."""
    batch_id = generate_event_batch_id()
    for i, key in enumerate(keys):
        planned = AssetMaterializationPlannedData(key, partition=context.partition_key)
        event = DagsterEvent.build_asset_materialization_planned_event(PARTITION_JOB, CHAIN_STEP, planned)
        context.instance.report_dagster_event(
            event, context.run_id, batch_metadata=DagsterEventBatchMetadata(batch_id, i == len(keys) - 1)
        )


def build_partition_job(
    assets: Sequence[AssetsDefinition], partitions: MultiPartitionsDefinition
) -> JobDefinition:
    chain, rest = split_at_router(assets)
    keys = set().union(*(a.required_resource_keys for a in assets))

    @op(name=CHAIN_STEP, pool=ROUTER_POOL, required_resource_keys=keys, out=Out(Nothing))
    def router_chain(context: OpExecutionContext) -> None:
        if context.retry_number == 0:
            plan_materializations(context, [a.key for a in [*chain, *rest]])
        run_assets(context, chain)

    @op(name="outputs", required_resource_keys=keys, ins={"after": In(Nothing)})
    def outputs(context: OpExecutionContext) -> None:
        run_assets(context, rest)

    @job(
        name=PARTITION_JOB,
        partitions_def=partitions,
        description="A partition's assets in two steps: how a batch runs each of its partitions",
    )
    def esc_sync_partition() -> None:
        outputs(after=router_chain())

    return esc_sync_partition
