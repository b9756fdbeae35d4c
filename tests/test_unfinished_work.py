"""Issue 20 without a deployment: work left undone is never green, and `esc-sync sync` finishes it
whether or not Esse3 changed; the retry schedule, the unfinished_work sensor's decisions, transient
failures, the run launcher's health check, `serve`'s address and parent-death signal."""

from __future__ import annotations

import datetime as dt
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from etl import cli
from etl.assets.step_retries import is_transient
from etl.demo.config import DEMO_ATENEI, demo_config_toml, key_env
from etl.deploy.launcher import process_alive
from etl.deploy.processes import _die_with, _wait_port_free
from etl.domain.retries import MAX_ATTEMPTS, RetryState, delay, exhausted, next_attempt, run_key
from etl.emulator import FaultConfig, start_emulator
from etl.errors import EscSyncError, ExitCode, UniversityError, VanishHeld
from etl.partitions import Partition
from etl.report import badges_line
from etl.store.db import make_engine
from etl.store.locks import PartitionBusy
from etl.unfinished import PartitionWork, schedule
from tests.fixtures.world import demo_home, use_home

INST, PIC, KEY = "unife", "999978433", "unfinished-work-unife"
T0 = dt.datetime(2026, 12, 5, 10, 0)


def test_the_retry_schedule_backs_off_and_ends() -> None:
    assert [delay(n).total_seconds() / 60 for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    state = next_attempt(None, T0)
    assert state == RetryState(1, T0, T0 + dt.timedelta(minutes=1))
    assert next_attempt(state, T0 + dt.timedelta(seconds=30)) is None  # not yet
    keys, last = {run_key("2025|unife", state)}, T0
    while not exhausted(state):
        last = state.next_at
        nxt = next_attempt(state, last)
        assert nxt is not None and nxt.first_at == T0 and nxt.attempts == state.attempts + 1
        keys.add(run_key("2025|unife", nxt))
        state = nxt
    assert state.attempts == MAX_ATTEMPTS and len(keys) == MAX_ATTEMPTS  # a new run key each time
    assert next_attempt(state, state.next_at + dt.timedelta(days=1)) is None  # left for a person
    assert last - T0 == dt.timedelta(minutes=123)  # the last attempt about two hours after the first


def test_the_sensor_schedules_due_partitions_skips_busy_ones_and_forgets_finished_ones(
    runtime: Any,
) -> None:
    a, b, c = (Partition(2025, "unife"), Partition(2024, "unife"), Partition(2025, "unipa"))
    work = [PartitionWork(p, ("2 person(s) and 0 card(s) not confirmed by the Router",)) for p in (a, b, c)]
    with runtime.engine.begin() as conn:
        due, given_up = schedule(conn, work, busy={c.key}, now=T0)
    assert [r.work.partition for r in due] == [a, b] and not given_up  # c has a run on it
    with runtime.engine.begin() as conn:
        again, _ = schedule(conn, work, busy=set(), now=T0 + dt.timedelta(seconds=10))
    assert [r.work.partition for r in again] == [c]  # a and b wait for their backoff
    with runtime.engine.begin() as conn:  # a is done: forgotten; b's next attempt is due
        later, _ = schedule(conn, work[1:], busy=set(), now=T0 + dt.timedelta(minutes=2))
        rows = dict(conn.execute(text("SELECT partition_key, attempts FROM partition_retries")).all())
    assert [r.work.partition for r in later] == [b, c] and later[0].state.attempts == 2
    assert rows == {b.key: 2, c.key: 2}


def test_transient_failures_are_told_from_permanent_ones() -> None:
    assert is_transient(EscSyncError("the Router is down", exit_code=ExitCode.ROUTER, transient=True))
    assert is_transient(PartitionBusy("held by run x"))
    assert is_transient(OperationalError("SELECT 1", {}, Exception("server closed the connection")))
    assert is_transient(OSError(28, "No space left on device"))
    assert not is_transient(
        UniversityError("university unife: the API key was refused", exit_code=ExitCode.ROUTER)
    )
    assert not is_transient(VanishHeld("2025|unife: 20 of 100 careers vanished"))
    assert not is_transient(ValueError("a bug"))


def test_the_run_launcher_knows_a_dead_run_process() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    recorded = time.time()
    assert process_alive(proc.pid, recorded)
    assert not process_alive(proc.pid, recorded - 3600)  # the pid was someone else's when recorded
    proc.kill()
    proc.wait()
    assert not process_alive(proc.pid, recorded)


def test_a_child_of_serve_dies_with_it() -> None:
    """serve's children are armed with a parent-death signal: here a stand-in parent is SIGKILLed."""
    parent = subprocess.Popen(
        [sys.executable, "-c", (
            "import subprocess, sys, time\n"
            "from etl.deploy.processes import _die_with\n"
            "import os\n"
            "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'],"
            " preexec_fn=_die_with(os.getpid()), start_new_session=True)\n"
            "print(c.pid, flush=True)\n"
            "time.sleep(60)\n"
        )],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )  # fmt: skip
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and process_alive(child, time.time()):
        time.sleep(0.1)
    assert not process_alive(child, time.time())
    assert callable(_die_with(os.getpid()))


def test_serve_refuses_a_port_another_process_holds() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        with pytest.raises(EscSyncError, match=f"port {port} on 127.0.0.1 is in use by another process"):
            _wait_port_free("127.0.0.1", port, timeout_s=1)
    _wait_port_free("127.0.0.1", port, timeout_s=1)  # free again


def test_status_counts_badges_that_carry_their_own_card_only() -> None:
    current = {1: "a", 2: "b", 3: "c"}
    carried = {1: ("a", True), 2: ("x", True), 4: ("y", False)}  # 2 carries someone else's ESCN
    line = badges_line(current, carried, with_png=True)
    assert line.startswith("1 of 3 registered card(s) on their Esse3 badge")
    assert ", 1 with the QR image" in line and "1 badge(s) carry another ESCN" in line


@pytest.fixture
def world(
    state_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Iterator[Any]:
    home, _ = demo_home(tmp_path, INST, seed=3, students=120, first_year=2025, last_year=2025,
                        now=dt.datetime(2026, 11, 2, 9, 0))  # fmt: skip
    emu = start_emulator({KEY: PIC}, tmp_path / "router.sqlite")
    toml = demo_config_toml(emu.url, atenei=DEMO_ATENEI[:1]).replace("first = 2019", "first = 2025")
    toml = toml.replace("concurrency = 16\n", "concurrency = 16\nmax_retries = 1\ntimeout_s = 2\n")
    use_home(monkeypatch, home, toml, state_url)
    monkeypatch.setenv(key_env(INST), KEY)

    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = cli.main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    yield run, emu, home
    emu.stop()


def test_calls_out_of_retries_are_never_green_and_sync_finishes_them(world: Any) -> None:
    run, emu, home = world
    emu.set_faults(FaultConfig(fail_rate=1.0, fault_kinds={"503": 1.0}))  # the Router answers 503 only
    code, out, err = run("sync")
    assert code == 0 and "failed" in out, out + err  # the run ends; its calls ran out of retries
    from dagster import DagsterInstance

    with DagsterInstance.from_config(str(home / "dagster")) as instance:
        checks = [
            e
            for r in instance.get_runs()
            for rec in instance.get_records_for_run(r.run_id).records
            if (e := rec.event_log_entry.dagster_event) is not None
            and e.event_type_value == "ASSET_CHECK_EVALUATION"
            and e.event_specific_data.asset_check_key.name == "router_calls_complete"
        ]  # fmt: skip
    assert checks and not all(c.event_specific_data.passed for c in checks)  # red in the UI
    code, out, _ = run("status")
    assert "not confirmed by the Router: `esc-sync sync` runs them again" in out
    emu.set_faults(FaultConfig())
    code, out, _ = run("reconcile")
    assert code == ExitCode.DRIFT and "not confirmed by the Router (run with --repair)" in out, out
    # Esse3 has not changed: sync runs the partition all the same, and everything is confirmed
    code, out, err = run("sync")
    assert code == 0 and "running 1 partition(s)" in out, out + err
    code, out, _ = run("reconcile")
    assert code == 0 and f"{INST}: Esse3, the state DB and the Router agree" in out, out
    assert "running 0 partition(s)" in run("sync")[1]
    engine = make_engine(os.environ["ESC_SYNC_DATABASE_URL"])
    with engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM persons WHERE state = 'pending'")).scalar_one() == 0
    engine.dispose()
