"""The deployment's run launcher: Dagster's default one (a run is a process the code server starts, on
the `serve` machine) with the health check the default lacks, so that run monitoring fails a run whose
process is gone (killed, out of memory, the machine restarted) instead of leaving it STARTED for good,
holding its university's run slots; run retries then launch it again.

Why this and not only ``max_runtime_seconds``: a timeout long enough for a 100,000-student partition
leaves a dead run's slots held for hours; a process check answers within one monitoring poll. The
timeout stays, as a backstop for a run that hangs alive.

Where `serve` runs a run host (etl/deploy/run_host.py) a run starts as a fork of that warm process, not
as a fresh one from a code server; with no host answering (a `dagster dev`, a host restarting) the run
starts Dagster's way. Either way the run reports the same "Started process" event the check reads."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path
from typing import Any

import psutil
from dagster import DagsterEventType, DefaultRunLauncher
from dagster._core.launcher.base import CheckRunHealthResult, LaunchRunContext, WorkerStatus
from dagster._core.storage.dagster_run import DagsterRun
from dagster._serdes import serialize_value

from etl.deploy.run_host import request_run
from etl.run_tags import HOST_TAG, PID_TAG

STARTED_PROCESS = "Started process for run"  # Dagster's engine event naming the run's process


RUN_HOST_TAG = "esc_sync/run_host"  # the run was forked by the run host: cancelled by a signal


class MonitoredRunLauncher(DefaultRunLauncher):
    def launch_run(self, context: LaunchRunContext) -> None:
        run = context.dagster_run
        home = Path(os.environ.get("DAGSTER_HOME") or self._instance.root_directory)
        try:
            origin = serialize_value(run.job_code_origin)
            self._instance.add_run_tags(run.run_id, {RUN_HOST_TAG: "1"})
            request_run(home, run.run_id, origin)
        except (FileNotFoundError, ConnectionRefusedError, RuntimeError) as e:
            # no host, or it answered that it forked nothing (a timeout is not that: it may have)
            self._instance.add_run_tags(run.run_id, {RUN_HOST_TAG: "0"})
            self._instance.report_engine_event(
                f"no run host ({type(e).__name__}): the run starts from its code server", run, cls=type(self)
            )
            super().launch_run(context)

    def terminate(self, run_id: str) -> bool:
        """A forked run is interrupted as Dagster's code server interrupts its runs (SIGINT: the run
        ends CANCELED); a run started Dagster's way is cancelled Dagster's way."""
        run = self._instance.get_run_by_id(run_id)
        if run is None or run.is_finished or run.tags.get(RUN_HOST_TAG) != "1":
            return super().terminate(run_id)
        self._instance.report_run_canceling(run)
        started = run_process(self._instance, run_id)
        if started is None or not process_alive(*started):
            return False  # not started yet, or already gone: run monitoring ends it
        os.kill(started[0], signal.SIGINT)
        return True

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        started = run_process(self._instance, run.run_id) or in_process_of(self._instance, run)
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


def in_process_of(instance: Any, run: DagsterRun) -> tuple[int, float] | None:
    """A partition's run executed inside another process of this machine (a batch's, the CLI's):
    that process, and when the run was created (the process is older)."""
    record = instance.get_run_record_by_id(run.run_id)
    pid = run.tags.get(PID_TAG, "")
    if record is None or not pid.isdigit() or run.tags.get(HOST_TAG) != socket.gethostname():
        return None
    return int(pid), record.create_timestamp.timestamp()


def process_alive(pid: int, recorded_at: float) -> bool:
    """Alive, and the same process (a reused pid started after the event was recorded is not)."""
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE and proc.create_time() <= recorded_at + 1
    except psutil.Error:
        return False
