"""The deployment's run launcher: Dagster's default one (a run is a process the code server starts, on
the `serve` machine) with the health check the default lacks, so that run monitoring fails a run whose
process is gone (killed, out of memory, the machine restarted) instead of leaving it STARTED for good,
holding its university's run slots; run retries then launch it again.

Why this and not only ``max_runtime_seconds``: a timeout long enough for a 100,000-student partition
leaves a dead run's slots held for hours; a process check answers within one monitoring poll. The
timeout stays, as a backstop for a run that hangs alive."""

from __future__ import annotations

from typing import Any

import psutil
from dagster import DagsterEventType, DefaultRunLauncher
from dagster._core.launcher.base import CheckRunHealthResult, WorkerStatus
from dagster._core.storage.dagster_run import DagsterRun

STARTED_PROCESS = "Started process for run"  # Dagster's engine event naming the run's process


class MonitoredRunLauncher(DefaultRunLauncher):
    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        started = run_process(self._instance, run.run_id)
        if started is None:  # not recorded yet: the start timeout covers a run that never starts
            return CheckRunHealthResult(WorkerStatus.UNKNOWN, "no run process recorded yet")
        pid, at = started
        if process_alive(pid, at):
            return CheckRunHealthResult(WorkerStatus.RUNNING)
        return CheckRunHealthResult(WorkerStatus.NOT_FOUND, f"the run's process {pid} is gone")


def run_process(instance: Any, run_id: str) -> tuple[int, float] | None:
    """The run's process id and when Dagster recorded it, from its engine event."""
    for record in instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT):
        event = record.dagster_event
        if event is None or not (event.message or "").startswith(STARTED_PROCESS):
            continue
        pid = event.event_specific_data.metadata.get("pid")
        if pid is not None:
            return int(pid.value), record.timestamp
    return None


def process_alive(pid: int, recorded_at: float) -> bool:
    """Alive, and the same process (a reused pid started after the event was recorded is not)."""
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE and proc.create_time() <= recorded_at + 1
    except psutil.Error:
        return False
