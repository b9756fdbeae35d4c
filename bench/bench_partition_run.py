"""What a partition's own Dagster run costs inside a batch (issue 25): the fixed cost every partition
pays whatever its size, on the deployment's PostgreSQL storage.

One university × ``--years`` academic years (demo Esse3, ``--students`` careers over the years), the
Router emulator at ``--latency-ms``. The partitions go through ``run_partitions`` as a batch runs them
(a Dagster run each, on an instance written as `esc-sync deploy init` writes it), first doing their
work, then ``--rounds`` times more with nothing changed in Esse3. In the same run, the baseline: the
same steps without Dagster on the same unchanged partitions (the Router chain and the job's other
steps, as `bench_scale.py`'s bare chain runs them). Reported per partition run: the machine's busy CPU
(PostgreSQL included) with and without Dagster, the difference (Dagster's share), the statements sent to
each database, and the run's events by type.

``--upstream METHOD`` (``has_table``, ``store_event``; repeatable): rounds alternate between the
deployment's event log storage and one whose METHODs are dagster-postgres's own (``has_table`` asks
PostgreSQL's catalog at each use; ``store_event`` sends a NOTIFY after each event).
``--job JOB`` (``esc_sync``, ``esc_sync_partition``; repeatable, default both): the asset job's runs (a
step per asset) and the partition job's (etl.partition_job, as a batch runs them), alternating in each
round. The first run of each partition, which does the work, is the partition job's.

    .venv/bin/python bench/bench_partition_run.py [--students 700] [--rounds 6] [--upstream has_table]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import statistics
import sys
import tempfile
import tomllib
import types
from collections import Counter
from pathlib import Path
from typing import Any

from dagster import DagsterInstance
from dagster_postgres import PostgresEventLogStorage
from sqlalchemy import event
from sqlalchemy.engine import Engine

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_router import Phases, run_chain  # the script's own folder
from bench_scale import run_other_steps, universities
from cpu_sampling import busy_cpu_seconds

from etl.config import current_academic_year, parse_settings
from etl.definitions import JOB_NAME, build_definitions
from etl.demo.config import DemoAteneo
from etl.demo.generate import generate
from etl.deploy.env import DAGSTER_PG_ENV, dagster_pg_url
from etl.deploy.instance import write_instance
from etl.emulator import FaultConfig, start_emulator
from etl.orchestrate import run_partitions
from etl.partition_job import PARTITION_JOB
from etl.partitions import Partition
from etl.resources.runtime import Runtime
from etl.store.migrate import upgrade
from tests.deployment import add_service_args, deploy_toml, fresh_database

UPSTREAM = ("has_table", "store_event")  # the deployment's event log storage's own versions


class Statements:
    """Statements sent through SQLAlchemy while counting, by database."""

    def __init__(self) -> None:
        self.by_db: Counter[str] = Counter()
        self.on = False
        event.listen(Engine, "before_cursor_execute", self._seen)

    def _seen(self, conn: Any, *_: Any) -> None:
        if self.on:
            self.by_db[conn.engine.url.database or "?"] += 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--students", type=int, default=700, help="careers of the university, over the years")
    ap.add_argument("--years", type=int, default=7)
    ap.add_argument("--rounds", type=int, default=6, help="runs of every partition with nothing changed")
    ap.add_argument("--latency-ms", type=float, default=2.0)
    ap.add_argument("--upstream", action="append", choices=UPSTREAM, default=[])
    ap.add_argument("--job", action="append", choices=(JOB_NAME, PARTITION_JOB), default=[])
    add_service_args(ap)
    args = ap.parse_args()

    last = current_academic_year()
    first = last - args.years + 1
    a = universities(1)[0]
    key = f"bench-{a.code}-key-0123456789abcdef"
    home = Path(tempfile.mkdtemp(prefix="esc-sync-partition-run-"))
    try:
        measure(args, a, key, home, first, last)
    finally:
        shutil.rmtree(home, ignore_errors=True)  # demo personal data


def measure(args: argparse.Namespace, a: DemoAteneo, key: str, home: Path, first: int, last: int) -> None:
    now = dt.datetime.now().replace(microsecond=0) - dt.timedelta(hours=1)
    careers = generate(
        f"sqlite:///{home / f'esse3-{a.code}.sqlite'}", seed=a.seed, students=args.students, first_year=first,
        last_year=last, now=now, matricola_base=a.matricola_base, email_domain=f"studenti.{a.domain}",
    ).careers  # fmt: skip
    partitions = [Partition(y, a.code) for y in range(first, last + 1)]
    n = len(partitions)
    with (
        fresh_database(args.pg_url, "escsync_partrun_state") as state_url,
        fresh_database(args.pg_url, "escsync_partrun_dagster", driver="postgresql") as dagster_pg,
        start_emulator({key: a.pic}, faults=FaultConfig(latency_ms=args.latency_ms)) as emu,
    ):
        raw = tomllib.loads(deploy_toml(emu.url, first, last, [a], batch_partitions=args.years))
        settings = parse_settings(raw, home=home, database_url=state_url, config_path=home / "esc-sync.toml")
        os.environ[settings.ateneo(a.code).router_api_key_env] = key
        os.environ["ESC_SYNC_BROKER_URL"] = args.broker
        os.environ[DAGSTER_PG_ENV] = dagster_pg_url({DAGSTER_PG_ENV: dagster_pg})
        assert settings.deploy is not None
        write_instance(home / "dagster", settings.deploy)
        runtime = Runtime(settings)
        upgrade(runtime.engine)
        statements = Statements()
        defs = build_definitions(settings, runtime)
        with DagsterInstance.from_config(str(home / "dagster")) as instance:
            storage: Any = instance.event_log_storage

            def dagster_round(upstream: list[str], job: str = PARTITION_JOB) -> float:
                for method in UPSTREAM:
                    if method in upstream:  # dagster-postgres's own
                        theirs_method = getattr(PostgresEventLogStorage, method)
                        setattr(storage, method, types.MethodType(theirs_method, storage))
                    else:
                        storage.__dict__.pop(method, None)
                cpu = busy_cpu_seconds()
                outcome = run_partitions(defs, instance, partitions, lock_engine=runtime.engine, job_name=job)
                cpu = busy_cpu_seconds() - cpu
                if outcome.failures:
                    sys.exit(f"a partition run failed: {outcome.failures[0].message}")
                return cpu / n

            def bare_round() -> float:
                cpu = busy_cpu_seconds()
                run_chain(runtime, partitions, Phases(), runtime.router_client)
                run_other_steps(runtime, partitions)
                return (busy_cpu_seconds() - cpu) / n

            first_cpu = dagster_round([])
            theirs = f"dagster-postgres's {' and '.join(args.upstream)}"
            # label → (dagster-postgres's methods, job); statements are counted in the first
            modes = {job: ([], job) for job in args.job or (JOB_NAME, PARTITION_JOB)}
            if args.upstream:
                modes[f"{JOB_NAME}, {theirs}"] = (args.upstream, JOB_NAME)
            runs: dict[str, list[float]] = {m: [] for m in modes}
            events: dict[str, Counter[str]] = {}
            bare: list[float] = []
            for _ in range(args.rounds):
                bare.append(bare_round())
                for m, (upstream, job) in modes.items():
                    statements.on = m == next(iter(modes))  # the first mode's
                    runs[m].append(dagster_round(upstream, job))
                    statements.on = False
                    records = instance.get_records_for_run(instance.get_runs(limit=1)[0].run_id, limit=10_000)
                    kinds = (r.event_log_entry.dagster_event for r in records.records)
                    events[m] = Counter(e.event_type_value if e else "LOG" for e in kinds)
        runtime.dispose()

    print(
        f"1 university × {n} academic years, {careers} careers ({careers / n:.0f} a partition); the Router "
        f"emulator at {args.latency_ms:g} ms; {os.cpu_count()} CPUs; medians of {args.rounds} rounds"
    )
    print(f"  first run of each partition (its real work): {first_cpu:.3f} CPU-s a partition run")
    base = statistics.median(bare)
    print(f"  nothing changed, without Dagster (the steps' own work): {base:.3f} CPU-s a partition")
    for m in modes:
        cpu = statistics.median(runs[m])
        share = cpu - base
        print(
            f"  nothing changed, a Dagster run each ({m}): {cpu:.3f} CPU-s a partition "
            f"run; Dagster's share {share:.3f} CPU-s = {share / careers * n * 1000:.2f} CPU-ms a career here"
        )
    names = {os.path.basename(state_url): "state DB", os.path.basename(dagster_pg): "Dagster"}  # else Esse3
    by_db = ", ".join(
        f"{names.get(db, 'Esse3')} {c / n / args.rounds:.0f}" for db, c in statements.by_db.most_common()
    )
    print(f"  statements a partition run ({next(iter(modes))}): {by_db}")
    for m, counts in events.items():
        kinds = ", ".join(f"{k} {v}" for k, v in counts.most_common())
        print(f"  events of a partition run ({m}): {sum(counts.values())} ({kinds})")


if __name__ == "__main__":
    main()
