"""Crash recovery through the real command (issue 12): `esc-sync materialize` SIGKILLed mid-run three
times in a row, with no Dagster daemon, then a plain rerun finishes within a bound and converges.

The killed runs held `esc_router` pool slots in the Dagster instance (SQLite, the embedded default);
without the reaping in `etl.orchestrate` the rerun would wait for them forever.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from etl.emulator import FaultConfig, start_emulator
from etl.emulator.process import EmulatorProcess
from etl.errors import ExitCode
from etl.store.db import make_engine
from etl.store.migrate import upgrade
from tests.test_router_reliability import (
    INST,
    KEY,
    PIC,
    REPO,
    assert_router_equals_local,
    local_state,
    make_esse3,
    sync_env,
    write_config,
)

pytestmark = pytest.mark.slow  # end to end, seconds to minutes each: `make test-quick` leaves them out

RERUN_BOUND_S = 240


def count_runs(home: Path, *statuses: DagsterRunStatus) -> int:
    with DagsterInstance.from_config(str(home / "dagster")) as instance:
        return instance.get_runs_count(RunsFilter(statuses=list(statuses)))


def dead_runs(home: Path) -> int:
    """Runs the instance still believes are going (their processes were killed)."""
    return count_runs(home, DagsterRunStatus.STARTED, DagsterRunStatus.STARTING)


def wait_for_a_router_call(emu: EmulatorProcess, timeout_s: float = 60) -> bool:
    """True as soon as the emulator receives a call (a cold start can take longer than any delay)."""
    before, deadline = emu.stats()["requests"], time.monotonic() + timeout_s
    while emu.stats()["requests"] == before:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_materialize_killed_three_times_then_a_plain_rerun_finishes(tmp_path: Path, state_url: str) -> None:
    home = tmp_path / "home"
    make_esse3(home, students=300)
    engine = make_engine(state_url)
    upgrade(engine)
    command = [sys.executable, "-m", "etl.cli", "materialize", "--institution", INST]
    rng = random.Random(12)
    # 200 ms a call: each kill lands while a Router step holds its pool slot (the hang's cause)
    with start_emulator({KEY: PIC}, faults=FaultConfig(latency_ms=200)) as emu:
        write_config(home, emu.url)
        env = sync_env(home, state_url)
        killed_in_flight = 0
        for attempt in range(3):
            proc = subprocess.Popen(
                command, env=env, cwd=REPO, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            )  # fmt: skip
            assert proc.stdout is not None
            assert "running" in proc.stdout.readline()  # Dagster loaded, the first run starting
            time.sleep(rng.uniform(0.5, 2.5))  # the first kill lands anywhere, even between two runs
            if attempt:  # the others the moment a Router call arrives: each takes 200 ms, so the
                # process is inside a run's Router step (a fixed delay could land between two runs)
                killed_in_flight += wait_for_a_router_call(emu)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        assert killed_in_flight == 2
        # A kill between two partitions' runs leaves no run behind; one inside a run leaves it STARTED
        # with its slots held. The last kill's runs are the ones the rerun must free (each earlier
        # attempt freed its predecessor's when it started).
        dead = dead_runs(home)
        started = time.monotonic()
        done = subprocess.run(
            command, env=env, cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=RERUN_BOUND_S,
        )  # fmt: skip
        elapsed = time.monotonic() - started
        assert done.returncode == 0, done.stderr[-2000:]
        # the dead runs' slots were freed, no daemon needed (without it this rerun waits forever)
        if dead:
            assert f"freed the pool slots of {dead} run(s)" in done.stdout
        assert dead_runs(home) == 0
        assert count_runs(home, DagsterRunStatus.FAILURE) >= 1  # some kill left a run that was freed
        assert "Traceback" not in done.stderr
        assert_router_equals_local(emu.url, local_state(engine), emu)
    engine.dispose()
    assert elapsed < RERUN_BOUND_S


def test_two_runs_of_one_partition_at_once_never_double_the_router_work(
    tmp_path: Path, state_url: str
) -> None:
    """The second run stops with one line naming the run that holds the partition; the first finishes;
    the Router sees each person once (no second POST), and a later run finds nothing to do."""
    home = tmp_path / "home"
    make_esse3(home, students=300)
    engine = make_engine(state_url)
    upgrade(engine)
    command = [sys.executable, "-m", "etl.cli", "materialize", "--partition", "2025|unife"]
    # 800 ms a call: the first run holds the partition for seconds, longer than the second takes to start
    with start_emulator({KEY: PIC}, faults=FaultConfig(latency_ms=800)) as emu:
        write_config(home, emu.url)
        env = sync_env(home, state_url)
        first = subprocess.Popen(
            command, env=env, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while emu.stats()["requests"] == 0 and time.monotonic() < deadline:  # the first is at the Router
            time.sleep(0.05)
        second = subprocess.run(
            command, env=env, cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120
        )
        _out, first_err = first.communicate(timeout=240)
        # The command holds the partition's lock for its whole run: whichever run takes it first
        # finishes, the other stops at once with one line naming it, and nothing is done twice.
        outcomes = sorted([(first.returncode, first_err), (second.returncode, second.stderr)])
        (ok, _), (refused, err) = outcomes
        assert (ok, refused) == (0, ExitCode.BUSY), outcomes
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        assert "partition 2025|unife is being run by run" in lines[0] and "not run twice" in lines[0]
        posts = emu.stats()["responses"]
        assert "409" not in posts  # nobody POSTed what the other had registered
        assert_router_equals_local(emu.url, local_state(engine), emu)
    engine.dispose()


def test_sigint_and_sigterm_stop_promptly_with_one_line_and_a_rerun_finishes(tmp_path: Path) -> None:
    home = tmp_path / "home"
    make_esse3(home, students=300)
    state_url = f"sqlite:///{tmp_path / 'state.sqlite'}"
    engine = make_engine(state_url)
    upgrade(engine)
    command = [sys.executable, "-m", "etl.cli", "materialize", "--institution", INST]
    with start_emulator({KEY: PIC}, faults=FaultConfig(latency_ms=300)) as emu:
        write_config(home, emu.url)
        env = sync_env(home, state_url)
        for sig, code in ((signal.SIGTERM, ExitCode.TERMINATED), (signal.SIGINT, ExitCode.INTERRUPTED)):
            proc = subprocess.Popen(
                command, env=env, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            before = emu.stats()["requests"]
            deadline = time.monotonic() + 60
            while emu.stats()["requests"] == before and time.monotonic() < deadline:  # at the Router
                time.sleep(0.05)
            sent = time.monotonic()
            proc.send_signal(sig)
            _out, err = proc.communicate(timeout=60)
            assert time.monotonic() - sent < 10  # promptly
            lines = err.strip().splitlines()
            assert proc.returncode == code and len(lines) == 1, err[-2000:]
            assert lines[0].startswith("esc-sync: interrupted:") and "re-run to finish" in lines[0]
        emu.set_faults(FaultConfig())  # the rerun needs no slow Router
        done = subprocess.run(
            command, env=env, cwd=REPO, capture_output=True, text=True, timeout=RERUN_BOUND_S
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert_router_equals_local(emu.url, local_state(engine), emu)
    engine.dispose()
