"""Backfill at scale on the production deployment (issues 13 and 25): many universities × academic
years against the Router emulator, on 1, 2 and 4 Celery workers, beside the bare Router chain.

For each worker count, first the **bare chain** (measured again before each one, as this shared
machine's speed drifts over a long benchmark; ``--bare-once``: once): the same Esse3 data through the
Router chain without Dagster (careers → ESI → badges → cards, as `bench_router.py` runs it: one
process, the state DB on the same PostgreSQL, the emulator at the same latency): the CPU a career
costs the machine at least. Then a fresh deployment (state DB and Dagster storage on PostgreSQL,
RabbitMQ, `esc-sync serve`, N `esc-sync worker`s, the emulator at 40 ms a call); the esse3_changes
sensor finds every partition new and the daemon's queue runs them all (by default a batch per
university, issue 25; ``--batch-partitions 1``: a run per partition, as before; ``--asset-backfill``:
launched instead as the asset graph's *Materialize → partitions* of every partition, through the UI's
GraphQL mutation).
Reported:

- total time, against the ideal = Router calls × latency ÷ (N workers × the client's concurrency);
- CPU per career, all-in (the whole machine's busy CPU during the backfill but this benchmark's own
  process), against the bare chain's (goal: ≤ 1.5×), and by component (run processes, workers,
  daemon, PostgreSQL...). The deployment is started on universities without careers; once it is up
  (its first sensor tick) and measured idle, the careers appear in Esse3 and the clock starts:
  `serve`'s start is reported apart, as the bare chain leaves out its own process's start;
- runs launched per university (batches and partition runs the queue launched) and failed runs;
- the peak resident memory of one process, by component.

    .venv/bin/python bench/bench_scale.py [--universities 20] [--years 7] [--students 5000] [--workers 1,2,4]
    .venv/bin/python bench/bench_scale.py --national --workers 2   # 70 × 7 at 1/50, the rate limit on

``--students`` is per university, spread over the years. ``--national``: 70 universities whose sizes
follow a skewed spread (a few ten times the median), 1.9 million careers ÷ ``--scale`` (50) in all,
each university's key limited to ``--requests-per-second`` (50). Needs PostgreSQL (``--pg-url``) and
RabbitMQ (``--broker``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import tomllib
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter
from dagster._core.scheduler.instigation import InstigatorType, TickStatus

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_router import Phases, run_chain  # the script's own folder
from cpu_sampling import Sampler, busy_cpu_seconds

from etl.assets.badge_write_back import write_back_badges
from etl.assets.exports import export_partition
from etl.assets.qr import render_partition_qr
from etl.batches import BATCH_TAG, UNIVERSITY_TAG
from etl.config import DeploySettings, current_academic_year, parse_settings
from etl.definitions import PARTITION_RUN_JOBS
from etl.demo.config import DemoAteneo
from etl.demo.generate import generate
from etl.deploy.env import dagster_pg_url
from etl.domain.export_policy import ExportPolicy
from etl.emulator import FaultConfig, start_emulator
from etl.partitions import Partition
from etl.resources.runtime import Runtime
from etl.store.migrate import upgrade
from tests.deployment import (
    Processes,
    add_service_args,
    deploy_toml,
    deployment_env,
    esc_sync,
    free_port,
    fresh_database,
    launch_asset_backfill,
    wait_until,
)

ACTIVE = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
]


NATIONAL_CAREERS = 1_900_000  # Italy's universities, every academic year of a career (issue 25)


def national_sizes(n: int, total: int, seed: int = 25) -> list[int]:
    """Careers per university: log-normal (σ 0.9: the largest of 70 near ten times the median), summing
    to ``total``."""
    rng = random.Random(seed)
    raw = sorted((rng.lognormvariate(0.0, 0.9) for _ in range(n)), reverse=True)
    return [max(20, round(total * r / sum(raw))) for r in raw]


def universities(n: int) -> list[DemoAteneo]:
    return [
        DemoAteneo(f"uni{i:02d}", f"Università Demo {i}", f"97{i:07d}", f"uni{i:02d}.it", 100 + i,
                   100000 + 100000 * i, "automatic", False)
        for i in range(1, n + 1)
    ]  # fmt: skip


@dataclass
class Outcome:
    workers: int
    seconds: float
    partitions: int
    calls: int
    ideal: float
    failures: list[str]  # one line per failed run: which, and why
    launched: int  # runs the queue launched: batches and partition runs (not a batch's partitions)
    worker_rss_mb: float
    cpu_seconds: float  # the whole machine's, during the backfill, but this benchmark's own process
    cpu_by_component: dict[str, float]
    peak_rss: dict[str, int]  # component → the largest resident memory of one of its processes
    start_cpu_seconds: float  # the machine's from `serve`'s start to its first sensor tick
    idle_cpu_per_s: float  # the deployment's, up and idle (sensors, daemon, code servers)


def backfill(
    args: argparse.Namespace, atenei: list[DemoAteneo], home: Path, workers: int, first: int, last: int
) -> Outcome:
    """A deployment started on universities with no careers yet; once it is up and idle, their careers
    appear in Esse3 (as a new intake does) and every partition is backfilled. Measured from then: the
    deployment's start is reported apart, as the bare chain leaves out its own process's start."""
    keys = {a.code: f"scale-{a.code}-key-0123456789abcdef" for a in atenei}
    faults = FaultConfig(latency_ms=args.latency_ms)
    copy_esse3(home, atenei, careers=False)
    with (
        fresh_database(args.pg_url, "escsync_scale_state") as state_url,
        fresh_database(args.pg_url, "escsync_scale_dagster", driver="postgresql") as dagster_pg,
        start_emulator({keys[a.code]: a.pic for a in atenei}, faults=faults) as emu,
    ):
        toml = scale_toml(args, emu.url, first, last, atenei, workers)
        (home / "esc-sync.toml").write_text(toml, encoding="utf-8")
        env = deployment_env(home, state_url, dagster_pg, args.broker, keys)
        init = esc_sync(env, "deploy", "init", timeout=300)
        assert init.returncode == 0, init.stdout + init.stderr
        procs = Processes(env, home / f"logs-{workers}")
        try:
            pids = [procs.start(f"worker-{w}", "worker", "--name", f"w{w}").pid for w in range(workers)]
            cpu = busy_cpu_seconds()
            port = free_port()
            procs.serve(port)
            os.environ["ESC_SYNC_DAGSTER_PG_URL"] = dagster_pg_url({"ESC_SYNC_DAGSTER_PG_URL": dagster_pg})
            want = len(atenei) * (last - first + 1)
            with DagsterInstance.from_config(str(home / "dagster")) as instance:
                wait_until(lambda: sensor_ticked(instance), 300, "the esse3_changes sensor's first tick")
                start_cpu = busy_cpu_seconds() - cpu
                idle_cpu = busy_cpu_seconds()
                time.sleep(IDLE_S)
                idle = (busy_cpu_seconds() - idle_cpu) / IDLE_S

                def finished() -> bool:
                    done = [
                        RunsFilter(job_name=j, statuses=[DagsterRunStatus.SUCCESS])
                        for j in PARTITION_RUN_JOBS
                    ]
                    if sum(instance.get_runs_count(f) for f in done) < want:  # cheap, until it may be true
                        return False
                    partitions = {r.tags.get("dagster/partition") for f in done for r in instance.get_runs(f)}
                    return len(partitions - {None}) == want and not instance.get_runs_count(
                        RunsFilter(statuses=ACTIVE)
                    )

                sampler = Sampler(pids)
                sampler.start()
                started, cpu, own = time.monotonic(), busy_cpu_seconds(), time.process_time()
                add_careers(home, atenei)  # a new intake appears in Esse3
                if args.asset_backfill:  # the UI's Materialize → partitions, every partition
                    wanted = [f"{y}|{a.code}" for a in atenei for y in range(first, last + 1)]
                    launch_asset_backfill(port, "esc_sync", wanted)
                wait_until(finished, args.timeout, "every partition to succeed", poll_s=2)
                seconds, own = time.monotonic() - started, time.process_time() - own
                cpu = busy_cpu_seconds() - cpu - own  # this benchmark's process is not the deployment
                failed = failure_reasons(instance)
                in_batches = sum(
                    1
                    for j in PARTITION_RUN_JOBS
                    for r in instance.get_runs(RunsFilter(job_name=j))
                    if BATCH_TAG in r.tags
                )
                launched = instance.get_runs_count() - in_batches
            sampler.stop.set()
            sampler.join()
            by_component = sampler.cpu_by_component()
            by_component.pop("bench", None)
        finally:
            procs.stop_all()
        calls = emu.stats()["requests"]
    ideal = calls * args.latency_ms / 1000 / (workers * args.concurrency)
    peak = max(sampler.peak.values()) / 2**20
    return Outcome(
        workers, seconds, want, calls, ideal, failed, launched, peak, cpu, by_component, sampler.peak_rss,
        start_cpu, idle,
    )  # fmt: skip


def failure_reasons(instance: DagsterInstance) -> list[str]:
    """One line per failed run: its job, partition or university, and its last failure's message
    (the step's own exception, or Dagster's reason when run monitoring failed the run)."""
    kinds = {DagsterEventType.STEP_FAILURE, DagsterEventType.RUN_FAILURE}
    lines = []
    for run in instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.FAILURE])):
        events = [e for e in instance.all_logs(run.run_id, of_type=kinds) if e.dagster_event]
        step = next((e.dagster_event for e in reversed(events) if e.dagster_event.is_step_failure), None)
        error = step.step_failure_data.error if step else None
        while error is not None and error.cause is not None:  # Dagster wraps the step's own exception
            error = error.cause
        why = (error.message if error else events[-1].message if events else "").strip() or "no reason"
        where = run.tags.get("dagster/partition") or run.tags.get(UNIVERSITY_TAG, "")
        lines.append(f"{run.job_name} {where}: {why.splitlines()[0][:200]}")
    return lines


IDLE_S = 15.0  # how long the idle deployment is measured before the careers appear
CAREER_TABLES = ("P01_ANAPER", "P01_STU", "P01_BADGE")  # the courses (P06_CDS) are there from the start


def copy_esse3(home: Path, atenei: list[DemoAteneo], careers: bool = True) -> None:
    """Each university's Esse3 as generated (``pristine/`` beside ``home``), with or without its
    careers. Every measurement starts from the same data: a run writes ESIs and badges back to Esse3."""
    for a in atenei:
        copy = home / f"esse3-{a.code}.sqlite"
        shutil.copyfile(home.parent / "pristine" / copy.name, copy)
        if not careers:
            with closing(sqlite3.connect(copy)) as db:
                db.executescript("".join(f'DELETE FROM "{t}";' for t in CAREER_TABLES))


def add_careers(home: Path, atenei: list[DemoAteneo]) -> None:
    """The careers appear in each university's Esse3, one transaction per university."""
    for a in atenei:
        name = f"esse3-{a.code}.sqlite"
        with closing(sqlite3.connect(home / name)) as db, db:
            db.execute("ATTACH DATABASE ? AS pristine", (str(home.parent / "pristine" / name),))
            for t in CAREER_TABLES:
                db.execute(f'INSERT INTO main."{t}" SELECT * FROM pristine."{t}"')


def sensor_ticked(instance: DagsterInstance) -> bool:
    """The deployment is up: its code servers have answered the esse3_changes sensor once."""
    for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
        if state.instigator_name == "esse3_changes":
            ticks = instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=1)
            return bool(ticks) and ticks[0].status in (TickStatus.SKIPPED, TickStatus.SUCCESS)
    return False


def scale_toml(
    args: argparse.Namespace, router_url: str, first: int, last: int, atenei: list[DemoAteneo], workers: int
) -> str:
    toml = deploy_toml(
        router_url, first, last, atenei, executor="celery", sensor_interval_s=args.sensor_interval,
        max_concurrent_runs=4 * workers + 2, runs_per_university=2, router_steps=2 * workers,
        batch_partitions=args.batch_partitions, batch_runs=workers + args.batches_waiting,
        run_host=not args.no_run_host,
    )  # fmt: skip
    if args.requests_per_second:
        toml = toml.replace("[router]\n", f"[router]\nrequests_per_second = {args.requests_per_second}\n", 1)
    return toml.replace("write_back_qr_png = true", "write_back_qr_png = false")


def run_other_steps(runtime: Runtime, partitions: list[Partition]) -> None:
    """The esc_sync job's steps after the Router chain, as its assets call them, without Dagster: QR
    images, the badges' write-back to Esse3, the vendor exports."""
    settings = runtime.settings
    for p in partitions:
        ateneo = settings.ateneo(p.institution)
        render_partition_qr(runtime.engine, p, settings.qr_base_url)
        if ateneo.write_back_badge:
            write_back_badges(runtime.engine, runtime.esse3(p.institution), ateneo, p)
        export_partition(
            runtime.engine, p, home=settings.home, pic=ateneo.pic, policy=ExportPolicy.from_settings(settings)
        )


def bare_chain(
    args: argparse.Namespace, atenei: list[DemoAteneo], home: Path, first: int, last: int
) -> tuple[float, float]:
    """CPU-seconds the machine spends without Dagster on every partition's Router chain, then on the
    job's other steps (QR images, badge write-back, exports)."""
    keys = {a.code: f"bare-{a.code}-key-0123456789abcdef" for a in atenei}
    copy_esse3(home, atenei)
    with (
        fresh_database(args.pg_url, "escsync_scale_bare") as state_url,
        start_emulator(
            {keys[a.code]: a.pic for a in atenei}, faults=FaultConfig(latency_ms=args.latency_ms)
        ) as emu,
    ):
        raw = tomllib.loads(scale_toml(args, emu.url, first, last, atenei, 1))
        raw.pop("deploy")
        raw["router"].pop("requests_per_second", None)  # the rate limit costs time, not CPU
        settings = parse_settings(raw, home=home, database_url=state_url, config_path=home / "esc-sync.toml")
        for a in atenei:
            os.environ[settings.ateneo(a.code).router_api_key_env] = keys[a.code]
        runtime = Runtime(settings)
        upgrade(runtime.engine)
        phases, partitions = Phases(), [Partition(y, a.code) for a in atenei for y in range(first, last + 1)]
        try:
            cpu = busy_cpu_seconds()
            run_chain(runtime, partitions, phases, runtime.router_client)
            chain, cpu = busy_cpu_seconds() - cpu, busy_cpu_seconds()
            run_other_steps(runtime, partitions)
            other = busy_cpu_seconds() - cpu
        finally:
            runtime.dispose()
    if phases.report.counts["failed"]:
        sys.exit(f"the bare chain had failures: {dict(phases.report.counts)}")
    return chain, other


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--universities", type=int, default=20)
    ap.add_argument("--years", type=int, default=7)
    ap.add_argument("--students", type=int, default=5000, help="careers per university, over the years")
    ap.add_argument("--national", action="store_true", help="70 universities of skewed sizes, 1/--scale")
    ap.add_argument("--scale", type=int, default=50, help="--national: 1.9 million careers divided by this")
    ap.add_argument("--requests-per-second", type=float, help="each key's rate limit (--national: 50)")
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--batch-partitions", type=int, default=7, help="1: a run per partition")
    ap.add_argument("--batches-waiting", type=int, default=0, help="[deploy] batch_runs beyond the workers")
    ap.add_argument(
        "--asset-backfill", action="store_true",
        help="launched as the asset graph's Materialize → partitions (the sensor's interval set to an hour)",
    )  # fmt: skip
    ap.add_argument("--no-run-host", action="store_true", help="runs start Dagster's way, from code servers")
    ap.add_argument("--latency-ms", type=float, default=40.0)
    ap.add_argument(
        "--sensor-interval", type=int, default=DeploySettings.sensor_interval_s, help="esse3_changes' seconds"
    )
    ap.add_argument(
        "--concurrency", type=int, default=16, help="the Router client's calls in flight per step"
    )
    ap.add_argument(
        "--bare-once", action="store_true",
        help="the bare chain measured once, not again before each worker count's deployment",
    )  # fmt: skip
    ap.add_argument("--timeout", type=float, default=7200)
    add_service_args(ap)
    args = ap.parse_args()
    if args.asset_backfill:
        args.sensor_interval = 3600  # its first tick finds nothing; the backfill is the UI's
    if args.national:
        args.universities = 70
        args.requests_per_second = args.requests_per_second or 50.0

    last = current_academic_year()
    first = last - args.years + 1
    atenei = universities(args.universities)
    sizes = (
        national_sizes(len(atenei), NATIONAL_CAREERS // args.scale)
        if args.national
        else [args.students] * len(atenei)
    )
    home = Path(tempfile.mkdtemp(prefix="esc-sync-scale-")) / "home"
    home.mkdir(parents=True)
    pristine = home.parent / "pristine"  # as generated: each measurement starts from a copy
    pristine.mkdir()
    now = dt.datetime.now().replace(microsecond=0) - dt.timedelta(hours=1)
    careers = 0
    for a, size in zip(atenei, sizes, strict=True):
        stats = generate(
            f"sqlite:///{pristine / f'esse3-{a.code}.sqlite'}", seed=a.seed, students=size,
            first_year=first, last_year=last, now=now, matricola_base=a.matricola_base,
            email_domain=f"studenti.{a.domain}",
        )  # fmt: skip
        careers += stats.careers
    spread = f" (median {statistics.median(sizes):.0f}, largest {max(sizes)})" if args.national else ""
    print(
        f"{args.universities} universities{spread} × {args.years} academic years = "
        f"{args.universities * args.years} partitions, {careers} careers; Router emulator at "
        f"{args.latency_ms:g} ms a call, {args.concurrency} calls in flight per step"
        f"{f', {args.requests_per_second:g} requests/s per key' if args.requests_per_second else ''}; "
        f"batches of {args.batch_partitions} partition(s); runs started by "
        f"{'code servers' if args.no_run_host else 'the run host'}; {os.cpu_count()} CPUs",
        flush=True,
    )
    outcomes = []
    try:
        for i, n in enumerate(int(w) for w in args.workers.split(",")):
            if i == 0 or not args.bare_once:  # the machine's speed drifts over a long benchmark
                chain, other = (cpu / careers for cpu in bare_chain(args, atenei, home, first, last))
                bare, whole = chain, chain + other
                print(
                    f"  without Dagster, same data: the bare Router chain {bare * 1000:.2f} CPU-ms per "
                    f"career; the job's other steps (QR images, badge write-back, exports) "
                    f"{other * 1000:.2f} more: the whole job's work {whole * 1000:.2f}",
                    flush=True,
                )
            o = backfill(args, atenei, home, n, first, last)
            outcomes.append(o)
            speedup = outcomes[0].seconds / o.seconds  # against the first worker count measured
            per_career = o.cpu_seconds / careers
            print(
                f"  {n} worker(s): {o.seconds:7.1f} s for {o.calls} Router calls; ideal {o.ideal:6.1f} s "
                f"-> {o.seconds / o.ideal:4.2f}x ideal; speed-up {speedup:4.2f}x vs {outcomes[0].workers}; "
                f"{o.launched} runs launched ({o.launched / len(atenei):.1f} per university), "
                f"{len(o.failures)} failed; CPU {per_career * 1000:.2f} ms per career all-in = "
                f"{per_career / bare:.2f}x the bare chain (goal <= 1.5x), "
                f"{per_career / whole:.2f}x the whole job's work without Dagster; "
                f"{o.cpu_seconds / o.seconds / (os.cpu_count() or 1):.0%} of the machine busy",
                flush=True,
            )
            parts = ", ".join(
                f"{k} {v / careers * 1000:.2f}" for k, v in o.cpu_by_component.items() if v / careers >= 5e-6
            )
            unseen = (o.cpu_seconds - sum(o.cpu_by_component.values())) / careers * 1000
            print(
                f"    CPU-ms per career by component (sampled each second): {parts}; unattributed "
                f"(processes that ended between samples) {unseen:.2f}",
                flush=True,
            )
            print(
                f"    not in the figures above: serve's start, {o.start_cpu_seconds:.1f} CPU-s to its first "
                f"sensor tick; in them: the idle deployment's {o.idle_cpu_per_s:.3f} CPU-s a second",
                flush=True,
            )
            for line in o.failures:
                print(f"    failed run: {line}", flush=True)
            rss = ", ".join(
                f"{k} {v / 2**20:.0f}" for k, v in sorted(o.peak_rss.items(), key=lambda kv: -kv[1])
            )
            print(f"    peak RSS of one process by component, MB: {rss}", flush=True)
    finally:
        shutil.rmtree(home.parent, ignore_errors=True)  # demo personal data and logs


if __name__ == "__main__":
    main()
