"""The run host (issue 25): a run starts as a fork of a warm process, runs as Dagster's run process
would, is cancelled and health-checked like one, and without a host the launcher says so."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, reconstructable
from dagster._core.launcher.base import WorkerStatus
from dagster._serdes import serialize_value

from etl.deploy.launcher import RUN_HOST_TAG, MonitoredRunLauncher, run_process
from etl.deploy.run_host import request_run, socket_path
from tests.deployment import REPO, wait_until
from tests.fixtures.run_host_jobs import says_where, waits


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "dagster"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return home


@pytest.fixture
def host(home: Path) -> Iterator[subprocess.Popen[str]]:
    env = {**os.environ, "DAGSTER_HOME": str(home), "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "etl.deploy.run_host"], env=env, cwd=REPO, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    wait_until(lambda: socket_path(home).exists() or proc.poll() is not None, 60, "the run host", 0.1)
    assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
    yield proc
    proc.terminate()
    proc.wait(timeout=30)


def _run(instance: DagsterInstance, job: object, home: Path) -> tuple[str, int]:
    recon = reconstructable(job)  # type: ignore[arg-type]
    run = instance.create_run_for_job(recon.get_definition(), job_code_origin=recon.get_python_origin())
    instance.add_run_tags(run.run_id, {RUN_HOST_TAG: "1"})
    return run.run_id, request_run(home, run.run_id, serialize_value(run.job_code_origin))


def _status(instance: DagsterInstance, run_id: str) -> DagsterRunStatus:
    run = instance.get_run_by_id(run_id)
    assert run is not None
    return run.status


def test_a_run_is_a_fork_of_the_warm_host_and_reports_like_dagsters_own(
    home: Path, host: subprocess.Popen[str]
) -> None:
    assert stat.S_IMODE(socket_path(home).stat().st_mode) == 0o600
    with DagsterInstance.from_config(str(home)) as instance:
        run_id, pid = _run(instance, says_where, home)
        wait_until(lambda: _status(instance, run_id) == DagsterRunStatus.SUCCESS, 60, "the run", 0.2)
        said = " ".join(e.user_message for e in instance.all_logs(run_id))
        assert f"pid={pid} ppid={host.pid} warm=True" in said
        # the event run monitoring's health check reads names the fork
        started = run_process(instance, run_id)
        assert started is not None and started[0] == pid
        with pytest.raises(RuntimeError, match="the run host could not start the run"):
            request_run(home, run_id, '{"not": "an origin"}')  # nothing forked: the launcher falls back
        second, other = _run(instance, says_where, home)
        wait_until(lambda: _status(instance, second) == DagsterRunStatus.SUCCESS, 60, "a second run", 0.2)
        assert other != pid


def test_a_forked_run_is_cancelled_by_signal_and_a_killed_one_found_dead(
    home: Path, host: subprocess.Popen[str]
) -> None:
    with DagsterInstance.from_config(str(home)) as instance:
        launcher = MonitoredRunLauncher()
        launcher.register_instance(instance)
        cancelled, _ = _run(instance, waits, home)
        wait_until(lambda: instance.all_logs(cancelled, of_type=DagsterEventType.STEP_START) != [], 60,
                   "the step to start", 0.2)  # fmt: skip
        assert launcher.terminate(cancelled)
        wait_until(lambda: _status(instance, cancelled) == DagsterRunStatus.CANCELED, 60, "the cancel", 0.2)

        killed, pid = _run(instance, waits, home)
        wait_until(lambda: instance.all_logs(killed, of_type=DagsterEventType.STEP_START) != [], 60,
                   "the step to start", 0.2)  # fmt: skip
        run = instance.get_run_by_id(killed)
        assert run is not None
        assert launcher.check_run_worker_health(run).status == WorkerStatus.RUNNING
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: launcher.check_run_worker_health(run).status == WorkerStatus.NOT_FOUND, 30,
                   "the health check to see the run gone", 0.2)  # fmt: skip
        assert host.poll() is None  # the host lives on


def test_without_a_host_the_launcher_cannot_reach_one(home: Path) -> None:
    with pytest.raises(FileNotFoundError):  # the launcher then starts the run Dagster's way
        request_run(home, "0" * 36, "{}")


def test_a_dagster_home_too_deep_for_a_socket_address_still_gets_its_host(tmp_path: Path) -> None:
    """A Unix socket's address holds 107 bytes; a deeper DAGSTER_HOME (a test's or a container's
    volume) is reached through the folder's descriptor, not refused (serve would stop with it)."""
    deep = tmp_path / ("d" * 120) / "dagster"
    deep.mkdir(parents=True)
    env = {**os.environ, "DAGSTER_HOME": str(deep), "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "etl.deploy.run_host"], env=env, cwd=REPO)
    try:
        wait_until(lambda: socket_path(deep).exists() or proc.poll() is not None, 60, "the run host", 0.1)
        assert proc.poll() is None and len(str(socket_path(deep))) > 107
        assert stat.S_IMODE(socket_path(deep).stat().st_mode) == 0o600
        with pytest.raises(RuntimeError, match="the run host could not start the run"):
            request_run(deep, "0" * 36, "{}")  # it answered: connected through the long path
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert not socket_path(deep).exists()
