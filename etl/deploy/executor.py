"""The deployment's executor: steps as Celery tasks on the workers, or, for a run that carries little
(an incremental change of a partition already read), in the run's own process.

A step as a Celery task costs a message, a worker's pick-up and its events twice over, ~0.1 CPU-s, eight
times a run: most of what a run carrying one changed career costs once runs start warm (issue 25). A
backfill's runs keep the workers: that is where a partition's thousands of careers are spread.
Either way the ``esc_router`` pool holds (Dagster's in-process executor claims its slots too)."""

from __future__ import annotations

from typing import Any

from dagster import Executor, Field, InitExecutorContext, executor
from dagster._core.definitions.executor_definition import multiple_process_executor_requirements
from dagster._core.execution.retries import RetryMode
from dagster._core.executor.in_process import InProcessExecutor

from etl.deploy.env import broker_url

STEPS_IN_RUN = "steps_in_run"


@executor(
    name="celery_or_in_run",
    config_schema={
        STEPS_IN_RUN: Field(bool, default_value=False, description="the run's steps in its own process")
    },
    requirements=multiple_process_executor_requirements(),
)
def celery_or_in_run(init_context: InitExecutorContext) -> Executor:
    from etl.deploy.range_runs import HandsOffRanges  # an asset backfill's range runs become batches

    if init_context.executor_config[STEPS_IN_RUN]:

        class InRun(HandsOffRanges, InProcessExecutor):
            pass

        return InRun(retries=RetryMode.ENABLED)
    from dagster_celery.executor import CeleryExecutor  # only where a run sends steps to workers

    from etl.deploy.worker_app import CELERY_CONFIG

    class Celery(HandsOffRanges, CeleryExecutor):
        pass

    # the broker is read when a run starts, from the environment
    return Celery(
        retries=RetryMode.ENABLED, broker=broker_url(), backend="rpc://", config_source=CELERY_CONFIG
    )


def steps_in_run() -> dict[str, Any]:
    """The run config of a run whose steps stay in its process."""
    return {"execution": {"config": {STEPS_IN_RUN: True}}}
