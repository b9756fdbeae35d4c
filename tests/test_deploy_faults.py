"""The production deployment on this machine, and what it does when things break (issues 13 and 20).

`esc-sync deploy init` writes a Dagster instance on PostgreSQL; `esc-sync serve` runs Dagster's webserver
and daemon; Celery workers execute steps from RabbitMQ. Nobody launches a run by hand: the esse3_changes
sensor finds every partition of two universities new and the daemon's queue launches them. Then faults,
one after another on the same deployment, each followed by convergence within a bound with no person
acting: every partition's latest run SUCCESS, nothing unconfirmed, the Router equal to the state DB
(nobody registered twice), `reconcile` exit 0.

0. A worker SIGKILLed in the middle of a batch (issue 25: the first sweep runs each university's
   partitions in one batch), a third one joining: the batch is taken up elsewhere and finishes
   without redoing the partition it had finished.
1. The Router stopped for 60 s in the middle of the backfill (calls run out of retries, steps fail).
2. PostgreSQL backends (state DB and Dagster's) terminated every second for 20 s while runs work.
3. `serve` SIGKILLed alone (its webserver, daemon and run host must die with it), restarted; then the whole
   process tree SIGKILLed with runs in flight (run monitoring must fail the dead runs), restarted.
4. A university backfilled from the UI (the batch job's partitions page): one run, its years in it.

Needs PostgreSQL (ESC_SYNC_TEST_PG_URL) and a broker (ESC_SYNC_TEST_BROKER_URL, default RabbitMQ on
loopback); CI sets ESC_SYNC_REQUIRE_BROKER=1, where a missing broker fails the test instead of skipping.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import os
import re
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter
from dagster._core.execution.backfill import BulkActionStatus
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_START_TAG
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from etl.batches import BATCH_JOB, BATCH_TAG, UNIVERSITY_TAG, batch_years
from etl.definitions import JOB_NAME, PARTITION_RUN_JOBS
from etl.demo.config import DEMO_ATENEI
from etl.demo.generate import generate
from etl.demo.mutate import mutate
from etl.deploy.range_runs import HANDED_FROM_TAG, is_range_run
from etl.emulator import FaultConfig, start_emulator
from etl.partition_job import PARTITION_JOB
from etl.store.db import make_engine
from etl.store.work import unfinished_totals
from etl.unfinished import latest_runs
from tests.deployment import (
    Processes,
    deploy_toml,
    deployment_env,
    esc_sync,
    free_port,
    launch_asset_backfill,
    launch_backfill,
    wait_until,
)
from tests.test_router_reliability import NOW, assert_router_equals_local, local_state

YEARS = (2024, 2025)
CONVERGE_S = 300  # the bound: every fault converges within five minutes of its end
TASK = re.compile(r"Task execute_plan\[([0-9a-f-]{36})\] (received|succeeded)")
ACTIVE = [DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING,
          DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING]  # fmt: skip


def unfinished_tasks(log: str) -> list[str]:
    received = [m[1] for m in TASK.finditer(log) if m[2] == "received"]
    done = {m[1] for m in TASK.finditer(log) if m[2] == "succeeded"}
    return [t for t in received if t not in done]


def batch_midway(log: str) -> bool:
    """The worker is running a batch that has finished its first partition (received, not finished)."""
    if not unfinished_tasks(log):
        return False
    return ": done (1 of 2)" in log[log.rindex("received") :]


@dataclass
class Deployment:
    home: Path
    env: dict[str, str]
    state_url: str
    dagster_url: str
    procs: Processes
    port: int
    emulator: object
    keys: dict[str, str]
    log: list[str]

    def instance(self) -> DagsterInstance:
        os.environ["ESC_SYNC_DAGSTER_PG_URL"] = self.env["ESC_SYNC_DAGSTER_PG_URL"]
        return DagsterInstance.from_config(str(self.home / "dagster"))

    def settled(self) -> str | None:
        """None when the deployment has finished its work, else what is left (for the timeout's message)."""
        with self.instance() as instance:
            busy = sum(
                instance.get_runs_count(RunsFilter(job_name=j, statuses=ACTIVE)) for j in PARTITION_RUN_JOBS
            )
            latest = latest_runs(instance, *PARTITION_RUN_JOBS)
        not_ok = sorted(k for k, d in latest.items() if d.status != DagsterRunStatus.SUCCESS)
        partitions = set(latest)
        engine = make_engine(self.state_url)
        try:
            with engine.connect() as conn:
                left = {a.code: unfinished_totals(conn, a.code) for a in DEMO_ATENEI}
        finally:
            engine.dispose()
        unconfirmed = {k: v for k, v in left.items() if v.persons or v.cards}
        if busy or not_ok or unconfirmed or len(partitions) < len(YEARS) * len(DEMO_ATENEI):
            return f"{busy} active run(s), not ok {not_ok}, unconfirmed {unconfirmed}, {len(partitions)} seen"
        return None

    def converge(self, what: str, since: float) -> float:
        """Wait for the deployment to finish by itself; check the Router and `reconcile`; return seconds."""
        last: list[str | None] = [None]

        def done() -> bool:
            last[0] = self.settled()
            return last[0] is None

        try:
            wait_until(done, CONVERGE_S, f"convergence after {what}", poll_s=3)
        except TimeoutError as e:
            raise AssertionError(f"{e}: {last[0]}") from None
        took = time.monotonic() - since
        rec = esc_sync(self.env, "reconcile", timeout=300)
        assert rec.returncode == 0, rec.stdout + rec.stderr
        engine = make_engine(self.state_url)
        for a in DEMO_ATENEI:
            local = local_state(engine, a.code)
            key = self.keys[a.code]
            assert_router_equals_local(
                self.emulator.url, local, self.emulator, inst=a.code, key=key, pic=a.pic
            )
        engine.dispose()
        self.log.append(f"{what}: converged {took:.0f} s after the fault ended")
        return took

    def mutate(self, seed: int) -> None:
        for a in DEMO_ATENEI:
            mutate(
                f"sqlite:///{self.home / f'esse3-{a.code}.sqlite'}", seed=seed, now=dt.datetime.now(), size=30
            )

    def red_somewhere(self) -> bool:
        """The UI shows the trouble: a failed run or step, or a failed router_calls_complete check."""
        with self.instance() as instance:
            runs = [r for j in PARTITION_RUN_JOBS for r in instance.get_runs(RunsFilter(job_name=j))]
            if any(r.status == DagsterRunStatus.FAILURE for r in runs):
                return True
            records = instance.get_records_for_run
            for run in runs:
                for rec in records(run.run_id).records:
                    ev = rec.event_log_entry.dagster_event
                    if ev is None:
                        continue
                    if ev.event_type_value == "STEP_FAILURE" or ev.event_type_value == "STEP_UP_FOR_RETRY":
                        return True
                    if ev.event_type_value == "ASSET_CHECK_EVALUATION" and not ev.event_specific_data.passed:
                        return True
        return False


def pg_terminator(base_url: str, databases: list[str], seconds: float) -> threading.Thread:
    """Terminates every backend of ``databases`` once a second for ``seconds`` (a restart as clients
    see it)."""
    admin = create_engine(base_url, isolation_level="AUTOCOMMIT")

    def loop() -> None:
        deadline = time.monotonic() + seconds
        with admin.connect() as conn:
            while time.monotonic() < deadline:
                conn.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = ANY(:dbs) AND pid <> pg_backend_pid()"
                    ),
                    {"dbs": databases},
                )
                time.sleep(1)
        admin.dispose()

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    return t


@pytest.fixture
def deployment(tmp_path: Path, pg_url: str, dagster_pg: str, broker: str) -> Iterator[Deployment]:
    home = tmp_path / "home"
    home.mkdir()
    for a in DEMO_ATENEI:
        generate(
            f"sqlite:///{home / f'esse3-{a.code}.sqlite'}", seed=a.seed, students=200, first_year=2019,
            last_year=2025, now=NOW, matricola_base=a.matricola_base, email_domain=f"studenti.{a.domain}",
        )  # fmt: skip
    keys = {a.code: f"faults-{a.code}-{uuid.uuid4().hex}" for a in DEMO_ATENEI}
    emu = start_emulator({keys[a.code]: a.pic for a in DEMO_ATENEI}, tmp_path / "router.sqlite",
                         faults=FaultConfig(latency_ms=60))  # fmt: skip
    toml = deploy_toml(emu.url, *YEARS, max_concurrent_runs=4, runs_per_university=2, router_steps=4)
    # calls run out of retries within seconds of the Router going away (the case)
    toml = toml.replace("concurrency = 16\n", "concurrency = 16\nmax_retries = 2\ntimeout_s = 3\n")
    (home / "esc-sync.toml").write_text(toml, encoding="utf-8")
    env = deployment_env(home, pg_url, dagster_pg, broker, keys)
    init = esc_sync(env, "deploy", "init", timeout=120)
    assert init.returncode == 0, init.stderr
    assert "Dagster storage ready" in init.stdout and "answers" in init.stdout
    assert (home / "dagster" / "dagster.yaml").stat().st_mode & 0o077 == 0
    procs = Processes(env, tmp_path / "logs")
    d = Deployment(home, env, pg_url, dagster_pg, procs, free_port(), emu, keys, [])
    try:
        procs.start("worker-a", "worker", "--name", "a")  # b and c join later
        yield d
    finally:
        procs.stop_all()
        emu.stop()
        os.environ.pop("ESC_SYNC_DAGSTER_PG_URL", None)
        print("\n".join(d.log))


def children_of(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


@pytest.mark.postgres
@pytest.mark.slow
def test_a_deployment_converges_after_router_database_and_serve_faults(
    deployment: Deployment, pg_url: str
) -> None:
    d = deployment
    d.procs.serve(d.port)
    # 0. The sensor starts the backfill, a batch per university; worker a is killed in the middle of
    # its batch (first thing: on the demo's data the backfill takes seconds).
    wait_until(lambda: batch_midway(d.procs.log("worker-a")), 240, "a batch half done on a", 0.05)
    finished = re.findall(r"(\d{4}\|\w+): done \(1 of 2\)", d.procs.log("worker-a"))[-1]
    d.procs.kill("worker-a")
    # Workers added late take work: c first (a's batch and the other university's wait in the queue
    # for it), then b.
    d.procs.start("worker-c", "worker", "--name", "c")
    wait_until(lambda: "c@" in d.procs.log("worker-c") and " ready." in d.procs.log("worker-c"), 60, "c")
    d.procs.start("worker-b", "worker", "--name", "b")

    # 1. The Router stops for 60 s in the middle of the backfill (the killed step is being redone).
    d.emulator.stop()
    time.sleep(60)
    status = esc_sync(d.env, "status")
    assert "not confirmed by the Router" in status.stdout or d.red_somewhere(), status.stdout
    d.emulator.start()  # same port, same data
    d.converge("the Router down for 60 s", time.monotonic())
    assert d.red_somewhere()  # it was not green while it lasted
    check = esc_sync(d.env, "serve", "--check", timeout=60)  # the address serve recorded
    assert check.returncode == 0, check.stderr
    # A default serve's UI (no login of its own) listens on loopback only: unreachable from the network.
    listening = {
        c.laddr.ip
        for c in psutil.net_connections("inet")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == d.port
    }
    assert listening and all(ipaddress.ip_address(ip).is_loopback for ip in listening), listening

    # 2. PostgreSQL drops every connection every second for 20 s, while runs work.
    d.mutate(seed=21)
    wait_until(lambda: bool(d.settled()), 60, "the sensor to start runs", 0.5)
    names = [make_url(d.state_url).database, make_url(d.dagster_url).database]
    pg_terminator(pg_url, names, 20).join()
    d.converge("PostgreSQL connections dropped for 20 s", time.monotonic())

    # 3a. serve SIGKILLed alone: its code server, webserver and daemon go with it; a restart serves again.
    serve = d.procs.procs["serve"]
    children = psutil.Process(serve.pid).children()
    names = sorted(" ".join(p.cmdline()[2:4]) if p.cmdline()[1] == "-m" else Path(p.cmdline()[1]).name
                   for p in children)  # fmt: skip
    assert names == ["dagster api", "dagster-daemon", "dagster-webserver", "etl.deploy.run_host"]
    # the daemon loads the code location from serve's code server: it starts none of its own
    assert not [c for p in children for c in p.children(recursive=True) if "grpc" in c.cmdline()]
    private = Path(json.loads((d.home / "dagster" / "serve.json").read_text())["private"])
    assert (private / "workspace.yaml").is_file() and private.stat().st_mode & 0o777 == 0o700
    d.mutate(seed=22)
    os.kill(serve.pid, 9)
    serve.wait(timeout=10)
    _, alive = psutil.wait_procs(children, timeout=60)
    assert not alive, f"left behind: {[p.pid for p in alive]}"
    check = esc_sync(d.env, "serve", "--check", timeout=60)
    assert check.returncode == 8 and "no `esc-sync serve` is running" in check.stderr, check.stderr
    d.procs.serve(d.port)
    assert not private.exists()  # the killed serve's socket directory, removed by the next
    check = esc_sync(d.env, "serve", "--check", timeout=60)
    assert check.returncode == 0, check.stderr
    d.converge("serve SIGKILLed alone", time.monotonic())

    # 3b. the whole process tree SIGKILLed with runs in flight, then restarted.
    d.mutate(seed=23)
    with d.instance() as instance:
        wait_until(lambda: instance.get_runs_count(RunsFilter(statuses=[DagsterRunStatus.STARTED])) > 0, 120,
                   "a run in flight", 0.5)  # fmt: skip
    serve = d.procs.procs["serve"]
    tree = [psutil.Process(serve.pid), *children_of(serve.pid)]
    for p in tree:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(tree, timeout=30)
    d.procs.serve(d.port)
    d.converge("the whole serve tree SIGKILLed", time.monotonic())

    # The batch worker a was killed in was taken up by another worker, which did not run again the
    # partition it had finished; c, added late, took work; the operator's commands work on the
    # deployment's instance (nothing left to do).
    cut = unfinished_tasks(d.procs.log("worker-a"))
    assert len(cut) == 1
    assert f"execute_plan[{cut[0]}] succeeded" in d.procs.log("worker-b") + d.procs.log("worker-c")
    university = finished.split("|")[1]
    with d.instance() as instance:
        batches = instance.get_runs(RunsFilter(job_name=BATCH_JOB, tags={UNIVERSITY_TAG: university}))
        ran = [r for b in batches for r in instance.get_runs(RunsFilter(tags={BATCH_TAG: b.run_id}))]
    assert [r.status for r in ran if r.tags["dagster/partition"] == finished] == [DagsterRunStatus.SUCCESS]
    assert "succeeded" in d.procs.log("worker-c")
    again = esc_sync(d.env, "materialize", "--partition", f"{YEARS[1]}|unife")
    assert again.returncode == 0 and "cards +0" in again.stdout, again.stdout + again.stderr
    # worker logs carry Dagster's lines at their own level, not as Celery warnings
    assert " - DEBUG - " in d.procs.log("worker-c") and "WARNING/MainProcess" not in d.procs.log("worker-c")

    # 4. A university backfilled from the UI (the mutation its Launch backfill button sends): one run of
    # the batch job, carrying the university's tag (its run limit), each year a partition run in it.
    code = DEMO_ATENEI[1].code
    backfill = launch_backfill(d.port, BATCH_JOB, [code])
    with d.instance() as instance:
        ui_batch = RunsFilter(job_name=BATCH_JOB, tags={"dagster/backfill": backfill})
        wait_until(lambda: bool(instance.get_runs(ui_batch, limit=1)), 120, "the UI's batch run", 0.5)
        wait_until(lambda: instance.get_runs(ui_batch)[0].status not in ACTIVE, 300, "the UI's batch to end")
        [run] = instance.get_runs(ui_batch)
        assert run.status == DagsterRunStatus.SUCCESS and run.tags[UNIVERSITY_TAG] == code
        ran = instance.get_runs(RunsFilter(job_name=PARTITION_JOB, tags={BATCH_TAG: run.run_id}))
    assert sorted((r.tags["dagster/partition"], r.status) for r in ran) == [
        (f"{y}|{code}", DagsterRunStatus.SUCCESS) for y in YEARS
    ]
    d.converge("a university backfilled from the UI", time.monotonic())

    # 5. The same from the asset graph (Materialize → partitions: an asset backfill), every university's
    # years. Dagster ranges it by year (as many universities as years): the range run holding the first
    # year hands each university's years to one batch run, the other hands nothing; the batches'
    # partition runs carry the backfill's tag, and Dagster's backfill counts their materialisations.
    backfill = launch_asset_backfill(d.port, JOB_NAME, [f"{y}|{a.code}" for a in DEMO_ATENEI for y in YEARS])
    with d.instance() as instance:
        status = lambda: getattr(instance.get_backfill(backfill), "status", None)  # noqa: E731
        wait_until(lambda: status() != BulkActionStatus.REQUESTED, 300, "the asset backfill to end")
        assert status() == BulkActionStatus.COMPLETED_SUCCESS
        runs = instance.get_runs(RunsFilter(tags={"dagster/backfill": backfill}))
    ranged = {r.tags[ASSET_PARTITION_RANGE_START_TAG].split("|")[0]: r for r in runs if is_range_run(r.tags)}
    assert sorted(ranged) == [str(y) for y in YEARS]
    batches = {b.tags[UNIVERSITY_TAG]: b for b in runs if b.job_name == BATCH_JOB}
    assert sorted(batches) == sorted(a.code for a in DEMO_ATENEI)
    for batch in batches.values():
        assert batch.tags[HANDED_FROM_TAG] == ranged[str(YEARS[0])].run_id
        assert batch_years(batch.run_config) == list(YEARS)
    assert {r.status for r in [*ranged.values(), *batches.values()]} == {DagsterRunStatus.SUCCESS}
    partition_runs = [r for r in runs if r.job_name == PARTITION_JOB]
    ran = sorted((r.tags["dagster/partition"], r.tags[BATCH_TAG], r.status) for r in partition_runs)
    ok = DagsterRunStatus.SUCCESS
    assert ran == sorted((f"{y}|{a.code}", batches[a.code].run_id, ok) for a in DEMO_ATENEI for y in YEARS)
    assert len(runs) == len(ranged) + len(batches) + len(partition_runs)  # no run of a lone partition
    d.converge("a university backfilled from the asset graph", time.monotonic())
