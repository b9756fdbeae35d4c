"""A step's claim on its partition (etl.store.locks), with Dagster saying whether a holder's run is over."""

from __future__ import annotations

from contextlib import AbstractContextManager

from dagster import AssetExecutionContext, DagsterInstance
from sqlalchemy import Engine

from etl.store.locks import RunOver, partition_lock


def run_over_in(instance: DagsterInstance) -> RunOver:
    def run_over(run_id: str) -> bool:
        run = instance.get_run_by_id(run_id)
        return run is None or run.is_finished  # unknown: not a run of this deployment's instance

    return run_over


def claim_partition(
    context: AssetExecutionContext, engine: Engine, partition_key: str
) -> AbstractContextManager[None]:
    return partition_lock(engine, partition_key, context.run_id, run_over_in(context.instance))
