"""Backfill at scale on the production deployment (issue 13): many universities × academic years
against the Router emulator, on 1, 2 and 4 Celery workers.

For each worker count: a fresh deployment (state DB and Dagster storage on PostgreSQL, RabbitMQ,
`esc-sync serve`, N `esc-sync worker`s, the emulator at 40 ms a call); the esse3_changes sensor finds
every partition new and the daemon's queue runs them all. Reported:

- total time, against the ideal = Router calls × latency ÷ (N workers × the client's concurrency):
  the time the Router's latency alone would take at that parallelism (the baseline of the ratio);
- the speed-up against 1 worker;
- the workers' peak memory (RSS, largest worker);
- the CPU the whole machine spent, per partition and by component (run processes, workers, daemon,
  PostgreSQL, the emulator...), and the CPU floor: that CPU spread over every core at once, the
  least time this machine can take for it however the work is spread.

    .venv/bin/python bench/bench_scale.py [--universities 20] [--years 7] [--students 5000] [--workers 1,2,4]

``--students`` is per university, spread over the years. Needs PostgreSQL (``--pg-url``) and
RabbitMQ (``--broker``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from etl.config import current_academic_year
from etl.demo.config import DemoAteneo
from etl.demo.generate import generate
from etl.deploy.env import dagster_pg_url
from etl.emulator import FaultConfig, start_emulator
from tests.deployment import (
    Processes,
    add_service_args,
    deploy_toml,
    deployment_env,
    esc_sync,
    free_port,
    fresh_database,
    wait_until,
)

ACTIVE = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
]


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
    failed_runs: int
    runs: int  # every run launched: one per partition unless something ran twice
    worker_rss_mb: float
    cpu_seconds: float  # the whole machine's, during the backfill: every process of the deployment
    cpu_by_component: dict[str, float]


# Which part of the deployment a process is, from its command line (first match wins).
COMPONENTS = [
    ("run processes", ("multiprocessing.spawn",)),  # the code server spawns each run's process
    ("emulator", ("etl.emulator",)),
    ("code servers", ("api grpc",)),
    ("workers", ("celery", " worker")),
    ("daemon", ("dagster-daemon", "daemon run")),
    ("webserver", ("dagster-webserver", "dagster_webserver")),
    ("serve", (" serve",)),
    ("PostgreSQL", ("postgres",)),
    ("RabbitMQ", ("beam.smp", "rabbitmq")),
]


def component(cmdline: str) -> str:
    return next((name for name, marks in COMPONENTS if any(m in cmdline for m in marks)), "other")


class Sampler(threading.Thread):
    """Each second: the workers' peak resident memory (Celery process and children) and every
    process's CPU time, summed by component at the end (a process that ends between two samples
    loses at most its last second)."""

    def __init__(self, worker_pids: list[int]) -> None:
        super().__init__(daemon=True)
        self.pids, self.peak, self.stop = worker_pids, dict.fromkeys(worker_pids, 0), threading.Event()
        self.start_cpu = self.cpu_by_pid()
        self.last_cpu = dict(self.start_cpu)

    @staticmethod
    def cpu_by_pid() -> dict[int, tuple[str, float]]:
        out = {}
        for proc in psutil.process_iter(["cmdline", "cpu_times"]):
            times, cmd = proc.info["cpu_times"], " ".join(proc.info["cmdline"] or [])
            if times is not None:
                out[proc.pid] = (component(cmd) if proc.pid != os.getpid() else "bench",
                                 times.user + times.system)  # fmt: skip
        return out

    def run(self) -> None:
        while not self.stop.wait(1.0):
            self.sample()
            for pid in self.pids:
                try:
                    proc = psutil.Process(pid)
                    rss = sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])
                except psutil.Error:
                    continue
                self.peak[pid] = max(self.peak[pid], rss)

    def sample(self) -> None:
        for pid, (name, seconds) in self.cpu_by_pid().items():
            known = self.last_cpu.get(pid, ("other", 0.0))[0]  # an ended process has no command line
            self.last_cpu[pid] = (name if known == "other" else known, seconds)

    def cpu_by_component(self) -> dict[str, float]:
        self.sample()
        out: dict[str, float] = {}
        for pid, (name, seconds) in self.last_cpu.items():
            out[name] = out.get(name, 0.0) + seconds - self.start_cpu.get(pid, (name, 0.0))[1]
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def backfill(
    args: argparse.Namespace, atenei: list[DemoAteneo], home: Path, workers: int, first: int, last: int
) -> Outcome:
    keys = {a.code: f"scale-{a.code}-key-0123456789abcdef" for a in atenei}
    faults = FaultConfig(latency_ms=args.latency_ms)
    with (
        fresh_database(args.pg_url, "escsync_scale_state") as state_url,
        fresh_database(args.pg_url, "escsync_scale_dagster", driver="postgresql") as dagster_pg,
        start_emulator({keys[a.code]: a.pic for a in atenei}, faults=faults) as emu,
    ):
        toml = deploy_toml(
            emu.url, first, last, atenei, executor="celery", sensor_interval_s=5,
            max_concurrent_runs=4 * workers + 2, runs_per_university=2, router_steps=2 * workers,
        )  # fmt: skip
        toml = toml.replace("write_back_qr_png = true", "write_back_qr_png = false")
        (home / "esc-sync.toml").write_text(toml, encoding="utf-8")
        env = deployment_env(home, state_url, dagster_pg, args.broker, keys)
        init = esc_sync(env, "deploy", "init", timeout=300)
        assert init.returncode == 0, init.stdout + init.stderr
        procs = Processes(env, home / f"logs-{workers}")
        try:
            pids = [procs.start(f"worker-{w}", "worker", "--name", f"w{w}").pid for w in range(workers)]
            sampler = Sampler(pids)
            sampler.start()
            started, cpu = time.monotonic(), busy_cpu_seconds()
            procs.serve(free_port())
            os.environ["ESC_SYNC_DAGSTER_PG_URL"] = dagster_pg_url({"ESC_SYNC_DAGSTER_PG_URL": dagster_pg})
            want = len(atenei) * (last - first + 1)
            with DagsterInstance.from_config(str(home / "dagster")) as instance:

                def finished() -> bool:
                    done = instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.SUCCESS]))
                    return len({r.tags.get("dagster/partition") for r in done}) == want and not (
                        instance.get_runs_count(RunsFilter(statuses=ACTIVE))
                    )

                wait_until(finished, args.timeout, "every partition to succeed", poll_s=2)
                seconds, cpu = time.monotonic() - started, busy_cpu_seconds() - cpu
                failed = instance.get_runs_count(RunsFilter(statuses=[DagsterRunStatus.FAILURE]))
                runs = instance.get_runs_count()
            sampler.stop.set()
            sampler.join()
            by_component = sampler.cpu_by_component()
        finally:
            procs.stop_all()
        calls = emu.stats()["requests"]
    ideal = calls * args.latency_ms / 1000 / (workers * args.concurrency)
    peak = max(sampler.peak.values()) / 2**20
    return Outcome(workers, seconds, want, calls, ideal, failed, runs, peak, cpu, by_component)


def busy_cpu_seconds() -> float:
    t = psutil.cpu_times()
    return t.user + t.system + getattr(t, "nice", 0.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--universities", type=int, default=20)
    ap.add_argument("--years", type=int, default=7)
    ap.add_argument("--students", type=int, default=5000, help="careers per university, over the years")
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--latency-ms", type=float, default=40.0)
    ap.add_argument(
        "--concurrency", type=int, default=16, help="the Router client's calls in flight per step"
    )
    ap.add_argument("--timeout", type=float, default=7200)
    add_service_args(ap)
    args = ap.parse_args()

    last = current_academic_year()
    first = last - args.years + 1
    atenei = universities(args.universities)
    home = Path(tempfile.mkdtemp(prefix="esc-sync-scale-")) / "home"
    home.mkdir(parents=True)
    now = dt.datetime.now().replace(microsecond=0) - dt.timedelta(hours=1)
    careers = 0
    for a in atenei:
        stats = generate(
            f"sqlite:///{home / f'esse3-{a.code}.sqlite'}", seed=a.seed, students=args.students,
            first_year=first, last_year=last, now=now, matricola_base=a.matricola_base,
            email_domain=f"studenti.{a.domain}",
        )  # fmt: skip
        careers += stats.careers
    print(
        f"{args.universities} universities × {args.years} academic years = "
        f"{args.universities * args.years} partitions, {careers} careers; Router emulator at "
        f"{args.latency_ms:g} ms a call, {args.concurrency} calls in flight per step; {os.cpu_count()} CPUs"
    )
    outcomes = []
    try:
        for n in (int(w) for w in args.workers.split(",")):
            o = backfill(args, atenei, home, n, first, last)
            outcomes.append(o)
            speedup = outcomes[0].seconds / o.seconds  # against the first worker count measured
            print(
                f"  {n} worker(s): {o.seconds:7.1f} s for {o.calls} Router calls; ideal {o.ideal:6.1f} s "
                f"-> {o.seconds / o.ideal:4.2f}x ideal; speed-up {speedup:4.2f}x vs {outcomes[0].workers}; "
                f"peak worker RSS {o.worker_rss_mb:5.0f} MB; {o.runs} runs ({o.failed_runs} failed); "
                f"CPU {o.cpu_seconds / o.partitions:4.1f} s per partition "
                f"({o.cpu_seconds / o.seconds / (os.cpu_count() or 1):.0%} of the machine; "
                f"CPU floor {o.cpu_seconds / (os.cpu_count() or 1):.1f} s = that CPU on every core at once)",
                flush=True,
            )
            parts = ", ".join(f"{k} {v / o.partitions:.1f}" for k, v in o.cpu_by_component.items() if v > 0)
            print(f"    CPU-s per partition by component: {parts}", flush=True)
    finally:
        shutil.rmtree(home.parent, ignore_errors=True)  # demo personal data and logs


if __name__ == "__main__":
    main()
