"""Run partitions through Dagster from the command line (demo, CLI backfills, `sync`), on the Dagster
instance in ``$ESC_SYNC_HOME/dagster`` so every run shows up in the UI afterwards."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dagster import DagsterInstance, Definitions
from dagster._core.errors import DagsterExecutionStepExecutionError

from etl.config import Settings
from etl.definitions import JOB_NAME
from etl.errors import EscSyncError
from etl.partitions import Partition

DAGSTER_YAML = """\
# Written by esc-sync for the embedded default. Production: storage on PostgreSQL (see README).
telemetry:
  enabled: false
run_monitoring:
  enabled: true
  # A crashed run must not hold an esc_router pool slot forever.
  free_slots_after_run_end_seconds: 300
concurrency:
  pools:
    default_limit: 2
run_retries:
  enabled: true
  max_retries: 1
  retry_on_asset_or_op_failure: false
"""


def dagster_home(settings: Settings) -> Path:
    return Path(os.environ.get("DAGSTER_HOME") or settings.home / "dagster")


def ensure_instance(settings: Settings) -> DagsterInstance:
    home = dagster_home(settings)
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        (home / "dagster.yaml").write_text(DAGSTER_YAML)
    os.environ["DAGSTER_HOME"] = str(home)
    return DagsterInstance.from_config(str(home))


# The CLI prints its own progress lines and one-line errors; Dagster's event log stays in the UI.
_QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


@dataclass(frozen=True)
class PartitionRun:
    partition: Partition
    seconds: float
    metadata: dict[str, dict[str, Any]]  # asset name → metadata values


def run_partitions(
    defs: Definitions,
    instance: DagsterInstance,
    partitions: Sequence[Partition],
    *,
    progress: Callable[[int, int, PartitionRun], None] | None = None,
) -> list[PartitionRun]:
    """One run per partition (isolates failures, the Dagster default), in partition order."""
    job = defs.resolve_job_def(JOB_NAME)
    runs = []
    for i, partition in enumerate(partitions, 1):
        started = time.perf_counter()
        try:
            result = job.execute_in_process(instance=instance, partition_key=partition.key, run_config=_QUIET)
        except DagsterExecutionStepExecutionError as e:
            if isinstance(e.user_exception, EscSyncError):
                raise e.user_exception from None
            raise
        metadata = {
            m.asset_key.to_user_string(): {k: v.value for k, v in m.metadata.items()}
            for m in (
                e.step_materialization_data.materialization for e in result.get_asset_materialization_events()
            )
        }
        run = PartitionRun(partition, time.perf_counter() - started, metadata)
        runs.append(run)
        if progress:
            progress(i, len(partitions), run)
    return runs
