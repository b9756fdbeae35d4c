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
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from etl.demo.config import DEMO_ATENEI
from etl.demo.generate import generate
from etl.deploy.env import DEFAULT_BROKER
from etl.deploy.processes import check_broker
from etl.emulator import FaultConfig, start_emulator
from etl.errors import EscSyncError
from etl.store.db import make_engine
from tests.deployment import (
    Processes,
    deploy_toml,
    deployment_env,
    esc_sync,
    free_port,
    fresh_database,
    wait_until,
)
from tests.test_router_reliability import NOW, assert_router_equals_local, local_state

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
    with fresh_database(pg_url, "escsync_dagster", driver="postgresql") as url:
        yield url


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
    # 150 ms a call: the cards steps last long enough for the kill to land inside one
    pics = {keys[a.code]: a.pic for a in DEMO_ATENEI}
    with start_emulator(pics, faults=FaultConfig(latency_ms=150)) as emu:
        toml = deploy_toml(emu.url, *YEARS, max_concurrent_runs=4, runs_per_university=2, router_steps=4)
        (home / "esc-sync.toml").write_text(toml, encoding="utf-8")
        env = deployment_env(home, pg_url, dagster_pg, broker, keys)
        init = esc_sync(env, "deploy", "init", timeout=120)
        assert init.returncode == 0, init.stderr
        assert "Dagster storage ready" in init.stdout and "answers" in init.stdout
        dagster_home = home / "dagster"
        assert (dagster_home / "dagster.yaml").stat().st_mode & 0o077 == 0

        procs = Processes(env, tmp_path / "logs")
        try:
            procs.start("worker-a", "worker", "--name", "a")
            procs.start("worker-b", "worker", "--name", "b")
            procs.serve(port)
            check = esc_sync(env, "serve", "--check", "--port", str(port), timeout=60)
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

        # the operator's commands work on the deployment's instance too (PostgreSQL, plain URL given)
        again = esc_sync(env, "materialize", "--partition", f"{YEARS[1]}|unife")
        assert again.returncode == 0 and "cards +0" in again.stdout, again.stdout + again.stderr
        agree = esc_sync(env, "reconcile")
        assert agree.returncode == 0, agree.stdout + agree.stderr

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
