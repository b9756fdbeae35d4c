"""A production deployment on this machine, for the end-to-end test and the benchmarks (issue 13):
fresh PostgreSQL databases, the configuration, and the processes (`esc-sync serve`, workers, API),
each in its own session so that a kill takes its children too. Not part of the package."""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from etl.demo.config import DEMO_ATENEI, DemoAteneo, demo_config_toml, key_env
from etl.deploy.env import DEFAULT_BROKER
from etl.deploy.instance import LOCATION_NAME

REPO = Path(__file__).resolve().parents[1]


def add_service_args(ap: argparse.ArgumentParser) -> None:
    """The benchmarks' PostgreSQL server (a database is created per deployment) and broker."""
    pg = os.environ.get("ESC_SYNC_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
    ap.add_argument("--pg-url", default=pg)
    ap.add_argument("--broker", default=os.environ.get("ESC_SYNC_BROKER_URL", DEFAULT_BROKER))


@contextmanager
def fresh_database(base_url: str, prefix: str, driver: str | None = None) -> Iterator[str]:
    """A new empty database on ``base_url``'s server, dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        url = make_url(base_url).set(database=name)
        yield (url.set(drivername=driver) if driver else url).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def deploy_toml(
    router_url: str, first: int, last: int, atenei: Sequence[DemoAteneo] = DEMO_ATENEI, **deploy: object
) -> str:
    """The demo configuration of ``atenei`` for academic years ``first``-``last``, with [deploy]."""
    toml = demo_config_toml(router_url, atenei)
    toml = re.sub(r"first = \d+\nlast = \d+\n", f"first = {first}\nlast = {last}\n", toml, count=1)
    values = {"executor": "celery", "sensor_interval_s": 5} | deploy
    lines = "".join(f"{k} = {toml_value(v)}\n" for k, v in values.items())
    return f"{toml}\n[deploy]\n{lines}"


def toml_value(v: object) -> str:
    return str(v).lower() if isinstance(v, bool) else repr(v).replace("'", '"')


def deployment_env(
    home: Path, state_url: str, dagster_pg: str, broker: str, keys: Mapping[str, str]
) -> dict[str, str]:
    """What every process of the deployment reads; ``keys``: university code → its Router key."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ESC_SYNC_", "DAGSTER_"))}
    return (
        env
        | {
            "ESC_SYNC_HOME": str(home),
            "ESC_SYNC_CONFIG": str(home / "esc-sync.toml"),
            "ESC_SYNC_DATABASE_URL": state_url,
            "ESC_SYNC_DAGSTER_PG_URL": dagster_pg,
            "ESC_SYNC_BROKER_URL": broker,
            "ESC_SYNC_CELERY_QUEUE": f"esc-sync-{uuid.uuid4().hex[:8]}",  # no other deployment's steps
            "PYTHONPATH": str(REPO),
        }
        | {key_env(code): key for code, key in keys.items()}
    )


def esc_sync(env: Mapping[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "etl.cli", *args], env=dict(env), cwd=REPO, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


class Processes:
    """Long-running esc-sync commands with their output in ``logs/<name>.log``."""

    def __init__(self, env: Mapping[str, str], logs: Path) -> None:
        self.env, self.logs = dict(env), logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        logs.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        with open(self.logs / f"{name}.log", "wb") as log:  # the child keeps its own descriptor
            proc = subprocess.Popen(
                [sys.executable, "-m", "etl.cli", *args], env=self.env, cwd=REPO, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
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

    def serve(self, port: int, timeout_s: float = 180) -> None:
        self.start("serve", "serve", "--port", str(port))
        wait_until(lambda: "serving: UI" in self.log("serve"), timeout_s, "serve to be healthy")


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 1.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:g}s waiting for {what}")
        time.sleep(poll_s)


_REPOSITORY = {"repositoryLocationName": LOCATION_NAME, "repositoryName": "__repository__"}


def _graphql(port: int, query: str, variables: dict[str, Any]) -> Any:
    body = {"query": query, "variables": variables}
    return httpx.post(f"http://127.0.0.1:{port}/graphql", json=body, timeout=60).json()["data"]


def launch_backfill(port: int, job: str, partitions: Sequence[str]) -> str:
    """A backfill of a job's partitions as Dagster's UI launches one (its GraphQL mutation); its id."""
    params = {"selector": {"partitionSetName": f"{job}_partition_set", "repositorySelector": _REPOSITORY},
              "partitionNames": list(partitions)}  # fmt: skip
    return _launch(port, params)


def launch_asset_backfill(port: int, job: str, partitions: Sequence[str]) -> str:
    """An asset backfill of a job's assets' partitions, as the asset graph's *Materialize → partitions*
    launches one (the same mutation with an asset selection); its id."""
    query = "query($j: PipelineSelector!) { assetNodes(pipeline: $j) { assetKey { path } } }"
    nodes = _graphql(port, query, {"j": {**_REPOSITORY, "pipelineName": job}})["assetNodes"]
    assets = [{"path": node["assetKey"]["path"]} for node in nodes]
    return _launch(port, {"assetSelection": assets, "partitionNames": list(partitions)})


def _launch(port: int, params: dict[str, Any]) -> str:
    query = """mutation($p: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $p) {
        __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } } }"""
    launched = _graphql(port, query, {"p": params})["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    return str(launched["backfillId"])
