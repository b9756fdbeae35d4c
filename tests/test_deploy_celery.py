"""Issue 13's end-to-end test: the production deployment on this machine.

`esc-sync deploy init` writes a Dagster instance on PostgreSQL; `esc-sync serve` runs Dagster's
webserver and daemon; two `esc-sync worker` processes execute steps from RabbitMQ. Nobody launches a
run by hand: the esse3_changes sensor (running from the start in a deployment) finds every partition
of two universities new and the daemon's queue launches them. One worker is SIGKILLed while it talks
to the Router, a third joins; the killed step is handed to another worker, and the backfill converges
with nobody registered twice.

Needs PostgreSQL (ESC_SYNC_TEST_PG_URL) and a broker (ESC_SYNC_TEST_BROKER_URL, default RabbitMQ on
loopback); CI sets ESC_SYNC_REQUIRE_BROKER=1, where a missing broker fails the test instead of
skipping it.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from etl.demo.config import DEMO_ATENEI, demo_config_toml, key_env
from etl.demo.generate import generate
from etl.deploy.env import DEFAULT_BROKER
from etl.deploy.processes import check_broker
from etl.emulator import FaultConfig, start_emulator
from etl.errors import EscSyncError
from etl.store.db import make_engine
from tests.test_router_reliability import NOW, REPO, assert_router_equals_local, local_state

BROKER = os.environ.get("ESC_SYNC_TEST_BROKER_URL") or DEFAULT_BROKER
YEARS = (2024, 2025)
CONVERGE_S = 420


@pytest.fixture
def broker() -> str:
    try:
        check_broker(BROKER, timeout_s=3)
    except EscSyncError as e:
        if os.environ.get("ESC_SYNC_REQUIRE_BROKER"):
            pytest.fail(f"ESC_SYNC_REQUIRE_BROKER is set: {e}")
        pytest.skip(str(e))
    return BROKER


@pytest.fixture
def dagster_pg(pg_url: str) -> Iterator[str]:
    """A second fresh database, for Dagster's own storage."""
    name = f"escsync_dagster_{uuid.uuid4().hex[:12]}"
    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        url = make_url(pg_url).set(database=name, drivername="postgresql")
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def deploy_config(router_url: str) -> str:
    toml = demo_config_toml(router_url)
    toml = toml.replace("[academic_years]\nfirst = 2019\n", f"[academic_years]\nfirst = {YEARS[0]}\n")
    toml = toml.replace("\nlast = 2025\n", f"\nlast = {YEARS[1]}\n")
    return toml + (
        '\n[deploy]\nexecutor = "celery"\nmax_concurrent_runs = 4\nruns_per_university = 2\n'
        "router_steps = 4\nsensor_interval_s = 5\n"
    )


class Processes:
    """The deployment's processes, each in its own session so a kill takes its children too."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env, self.logs, self.procs = env, logs, {}  # type: dict[str, subprocess.Popen[bytes]]

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 (the child holds it)
        proc = subprocess.Popen(
            [sys.executable, "-m", "etl.cli", *args], env=self.env, cwd=REPO, stdin=subprocess.DEVNULL,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        log.close()
        self.procs[name] = proc
        return proc

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[name]
        if proc.poll() is None:
            os.killpg(proc.pid, sig)
        proc.wait(timeout=60)

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.kill(name, signal.SIGTERM if name == "serve" else signal.SIGKILL)


TASK = re.compile(r"Task execute_plan\[([0-9a-f-]{36})\] (received|succeeded)")


def unfinished_tasks(log: str) -> list[str]:
    received = [m[1] for m in TASK.finditer(log) if m[2] == "received"]
    done = {m[1] for m in TASK.finditer(log) if m[2] == "succeeded"}
    return [t for t in received if t not in done]


def router_step_in_progress(log: str) -> bool:
    """The worker is executing esi_assignments or esc_cards (received, started, not finished)."""
    if not unfinished_tasks(log):
        return False
    current = log[log.rindex("received") :]
    return any(f'Started execution of step "{s}"' in current for s in ("esi_assignments", "esc_cards"))


def wait_until(predicate, timeout_s: float, what: str, poll_s: float = 1.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout_s:g}s waiting for {what}"
        time.sleep(poll_s)


@pytest.mark.postgres
def test_two_universities_backfilled_by_two_celery_workers_one_killed_mid_run(
    tmp_path: Path, pg_url: str, dagster_pg: str, broker: str
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    for a in DEMO_ATENEI:
        generate(
            f"sqlite:///{home / f'esse3-{a.code}.sqlite'}", seed=a.seed, students=240, first_year=2019,
            last_year=2025, now=NOW, matricola_base=a.matricola_base, email_domain=f"studenti.{a.domain}",
        )  # fmt: skip
    keys = {a.code: f"deploy-test-{a.code}-{uuid.uuid4().hex}" for a in DEMO_ATENEI}
    port = free_port()
    logs = tmp_path / "logs"
    logs.mkdir()
    # 150 ms a call: the cards steps last long enough for the kill to land inside one
    pics = {keys[a.code]: a.pic for a in DEMO_ATENEI}
    with start_emulator(pics, faults=FaultConfig(latency_ms=150)) as emu:
        (home / "esc-sync.toml").write_text(deploy_config(emu.url), encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ESC_SYNC_", "DAGSTER_"))}
        env |= {
            "ESC_SYNC_HOME": str(home),
            "ESC_SYNC_CONFIG": str(home / "esc-sync.toml"),
            "ESC_SYNC_DATABASE_URL": pg_url,
            "ESC_SYNC_DAGSTER_PG_URL": dagster_pg,
            "ESC_SYNC_BROKER_URL": broker,
            "ESC_SYNC_CELERY_QUEUE": f"esc-sync-test-{uuid.uuid4().hex[:8]}",  # no other run's steps
            "PYTHONPATH": str(REPO),
        } | {key_env(code): key for code, key in keys.items()}
        init = subprocess.run(
            [sys.executable, "-m", "etl.cli", "deploy", "init"], env=env, cwd=REPO, capture_output=True,
            text=True, timeout=120,
        )  # fmt: skip
        assert init.returncode == 0, init.stderr
        assert "Dagster storage ready" in init.stdout and "answers" in init.stdout
        assert "PASSWORD" not in init.stdout
        dagster_home = home / "dagster"
        assert (dagster_home / "dagster.yaml").stat().st_mode & 0o077 == 0

        procs = Processes(env, logs)
        try:
            procs.start("serve", "serve", "--port", str(port))
            procs.start("worker-a", "worker", "--name", "a")
            procs.start("worker-b", "worker", "--name", "b")
            wait_until(lambda: "serving: UI" in procs.log("serve"), 180, "serve to be healthy")
            check = subprocess.run(
                [sys.executable, "-m", "etl.cli", "serve", "--check", "--port", str(port)], env=env,
                cwd=REPO, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert check.returncode == 0, check.stderr

            # The sensor launches the runs; worker a is killed inside a step that talks to the Router.
            wait_until(lambda: router_step_in_progress(procs.log("worker-a")), 240, "a Router step on a", 0.1)
            procs.kill("worker-a")
            procs.start("worker-c", "worker", "--name", "c")

            os.environ["ESC_SYNC_DAGSTER_PG_URL"] = env["ESC_SYNC_DAGSTER_PG_URL"]
            with DagsterInstance.from_config(str(dagster_home)) as instance:

                def converged() -> bool:
                    done = instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.SUCCESS]))
                    partitions = {r.tags.get("dagster/partition") for r in done}
                    busy = instance.get_runs_count(
                        RunsFilter(statuses=[DagsterRunStatus.QUEUED, DagsterRunStatus.STARTING,
                                             DagsterRunStatus.STARTED, DagsterRunStatus.NOT_STARTED])
                    )  # fmt: skip
                    return busy == 0 and len(partitions) == len(YEARS) * len(DEMO_ATENEI)

                wait_until(converged, CONVERGE_S, "every partition to succeed")
                runs = instance.get_runs()
        finally:
            procs.stop_all()
            os.environ.pop("ESC_SYNC_DAGSTER_PG_URL", None)

        engine = make_engine(pg_url)
        for a in DEMO_ATENEI:
            assert_router_equals_local(
                emu.url, local_state(engine, a.code), emu, inst=a.code, key=keys[a.code], pic=a.pic
            )
        engine.dispose()
    # the step a was killed in was executed again, whole, by another worker; c, added late, took work
    cut = unfinished_tasks(procs.log("worker-a"))
    assert len(cut) == 1
    assert f"execute_plan[{cut[0]}] succeeded" in procs.log("worker-b") + procs.log("worker-c")
    assert "succeeded" in procs.log("worker-c")
    assert len(runs) >= len(YEARS) * len(DEMO_ATENEI)
