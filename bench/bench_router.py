"""Backfill N students through the Router assets (esi_assignments + esc_cards) against the emulator.

Three measurements, in the same run:

1. At ``--latency-ms`` (40) per Router call, with the production client (concurrency 16): wall time of
   the Router work (both assets, their local DB work included) against the ideal
   ``calls × latency ÷ concurrency``, the call count taken from the emulator. Target ratio ≤ 1.3.
2. The same work through a sequential client, one call at a time (concurrency 1), as existing
   integrations do. Measured on ``--sequential-students`` (1,000) and extrapolated to N per call
   and per student. Target: the concurrent client at least 10× faster.
3. At zero latency: the whole chain (careers → ESI → cards) per student, the local overhead.
   Target ≤ 2 ms per student. CPU of this process and of the emulator are reported beside it.

Everything runs on loopback with SQLite state DBs in a temporary folder (``--keep`` keeps it).

    python bench/bench_router.py [--students 20000] [--sequential-students 1000] [--latency-ms 40]
                                 [--profile router.prof]
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import functools
import os
import pstats
import secrets
import shutil
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import psutil

from etl.assets.badges import ingest_badges
from etl.assets.cards import sync_cards
from etl.assets.careers import ingest_careers
from etl.assets.esi import assign_esis
from etl.assets.router_calls import CallReport
from etl.config import Settings, parse_settings
from etl.demo.config import demo_config_toml
from etl.demo.generate import generate
from etl.emulator import FaultConfig, start_emulator
from etl.partitions import Partition
from etl.resources.router import RouterClient
from etl.resources.runtime import Runtime
from etl.store.migrate import upgrade

INST = "unife"
YEARS = (2019, 2025)


@dataclass
class Phases:
    """Wall seconds per step, summed over partitions."""

    seconds: dict[str, float] = field(default_factory=dict)
    report: CallReport = field(default_factory=CallReport)

    def add(self, step: str, fn: Callable[..., object], *args: Any, **kwargs: Any) -> None:
        started = time.perf_counter()
        fn(*args, **kwargs)
        self.seconds[step] = self.seconds.get(step, 0.0) + time.perf_counter() - started

    @property
    def router_s(self) -> float:
        return self.seconds.get("esi", 0.0) + self.seconds.get("cards", 0.0)

    @property
    def total_s(self) -> float:
        return sum(self.seconds.values())


@dataclass
class Run:
    students: int
    careers: int
    phases: Phases
    calls: int  # authenticated API calls the emulator answered
    client_cpu_s: float
    emulator_cpu_s: float
    emulator_stats: dict[str, object]
    exchanges: list[float]  # seconds of every HTTP exchange as the client measured it
    load: tuple[float, float]  # 1-minute load average before and after: the machine is shared

    def percentile_ms(self, p: float) -> float:
        ordered = sorted(self.exchanges)
        return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))] * 1000 if ordered else 0.0


def settings_for(folder: Path, router_url: str, concurrency: int) -> Settings:
    s = parse_settings(
        tomllib.loads(demo_config_toml(router_url)),
        home=folder,
        database_url=f"sqlite:///{folder / 'state.sqlite'}",
        config_path=folder / "esc-sync.toml",
    )
    return replace(s, router=replace(s.router, concurrency=concurrency))


def cpu_seconds(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def backfill(
    folder: Path,
    students: int,
    latency_ms: float,
    concurrency: int,
    profile: cProfile.Profile | None = None,
    jitter_ms: float = 0.0,
) -> Run:
    """Generate an Esse3 of ``students`` careers and run the chain of every partition of unife, as
    the esc_sync job does, against a fresh emulator at ``latency_ms``."""
    folder.mkdir(parents=True)
    now = dt.datetime.now().replace(microsecond=0)
    stats = generate(
        f"sqlite:///{folder / f'esse3-{INST}.sqlite'}",
        seed=11,
        students=students,
        first_year=YEARS[0],
        last_year=YEARS[1],
        now=now,
    )
    key = "bench_" + secrets.token_urlsafe(16)
    with start_emulator(
        {key: "999978433"},
        folder / "router.sqlite",
        FaultConfig(latency_ms=latency_ms, latency_jitter_ms=jitter_ms),
    ) as emu:
        settings = settings_for(folder, emu.url, concurrency)
        ateneo = settings.ateneo(INST)
        os.environ[ateneo.router_api_key_env] = key
        runtime = Runtime(settings)
        upgrade(runtime.engine)

        clients: list[RouterClient] = []

        def client(institution: str) -> RouterClient:
            clients.append(runtime.router_client(institution))  # the production client and concurrency
            return clients[-1]

        phases = Phases()
        emu_proc = psutil.Process(emu.pid)
        emu_cpu, my_cpu = cpu_seconds(emu_proc), time.process_time()
        load_before = os.getloadavg()[0]
        if profile:
            profile.enable()
        try:
            run_chain(runtime, [Partition(y, INST) for y in settings.academic_years], phases, client)
        finally:
            if profile:
                profile.disable()
        client_cpu, emu_cpu = time.process_time() - my_cpu, cpu_seconds(emu_proc) - emu_cpu
        emu_stats = emu.stats()
        runtime.dispose()
    # Each client's reservoir holds every exchange below 50,000 calls (one client per asset run).
    exchanges = [x for c in clients for x in c.stats._latencies]
    if len(exchanges) != sum(c.stats.attempts for c in clients):
        exchanges = []  # a reservoir overflowed: latencies sampled, not usable as a sum
    counts = emu_stats["organisations"]["999978433"]  # type: ignore[index]
    with_problems = {k: v for k, v in emu_stats["responses"].items() if not k.startswith("2")}  # type: ignore[union-attr]
    if with_problems or phases.report.counts["failed"]:
        sys.exit(f"bench run had errors: responses {with_problems}, counts {dict(phases.report.counts)}")
    print(
        f"    {students:,} students → {stats.careers:,} careers, {counts['persons']:,} persons and "
        f"{counts['cards']:,} cards at the Router, {emu_stats['requests']:,} calls",
        flush=True,
    )
    return Run(
        students,
        stats.careers,
        phases,
        int(emu_stats["requests"]),  # type: ignore[arg-type]
        client_cpu,
        emu_cpu,
        emu_stats,
        exchanges,
        (load_before, os.getloadavg()[0]),
    )


def run_chain(
    runtime: Runtime, partitions: list[Partition], phases: Phases, client: Callable[[str], RouterClient]
) -> None:
    """The Router chain of each partition as the esc_sync job runs it (careers → ESI → badges → cards),
    without Dagster: the bare baseline of what a career costs."""
    today = dt.date.today()
    for p in partitions:
        ateneo, source = runtime.settings.ateneo(p.institution), runtime.esse3(p.institution)
        engine, clients = runtime.engine, functools.partial(client, p.institution)  # a client per asset run
        phases.add("careers", ingest_careers, engine, source, ateneo, p, today=today)
        phases.add("esi", assign_esis, engine, source, clients, ateneo, p, phases.report)
        phases.add("badges", ingest_badges, engine, source, p)
        phases.add("cards", sync_cards, engine, clients, ateneo, p, phases.report)


def ms(seconds: float, n: int) -> str:
    return f"{seconds * 1000 / n:.2f} ms"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--students", type=int, default=20_000)
    ap.add_argument("--sequential-students", type=int, default=1_000)
    ap.add_argument("--latency-ms", type=float, default=40.0)
    # A fixed latency keeps the 16 calls in lock-step: they leave and come back together and queue in
    # the emulator's single event loop. A uniform ±jitter keeps the mean at --latency-ms.
    ap.add_argument("--latency-jitter-ms", type=float, default=0.0)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--profile", type=Path, help="cProfile the zero-latency run into this file")
    ap.add_argument("--skip", action="append", default=[], choices=["latency", "sequential", "zero"])
    ap.add_argument("--keep", type=Path, help="work in this folder and keep it (must not exist)")
    args = ap.parse_args()

    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-router-"))
    n, lat, conc = args.students, args.latency_ms, args.concurrency
    print(f"bench_router: {n:,} students, latency {lat:g} ms, concurrency {conc}, work in {work}", flush=True)
    try:
        if "latency" not in args.skip:
            print(f"\n1. Router work at {lat:g} ms latency, concurrency {conc}", flush=True)
            a = backfill(work / "latency", n, lat, conc, jitter_ms=args.latency_jitter_ms)
            ideal = a.calls * lat / 1000 / conc
            ratio = a.phases.router_s / ideal
            observed = sum(a.exchanges) / conc or float("nan")
            busy = sum(a.exchanges) / (a.phases.router_s * conc)
            print(
                f"    Router work (esi_assignments + esc_cards, local DB work included): "
                f"{a.phases.router_s:.1f} s wall\n"
                f"    ideal = {a.calls:,} calls × {lat:g} ms ÷ {conc} = {ideal:.1f} s\n"
                f"    ratio wall/ideal = {ratio:.2f}  (target ≤ 1.3)  {'OK' if ratio <= 1.3 else 'MISSED'}\n"
                f"    where the excess goes: HTTP exchanges as the client saw them p50 "
                f"{a.percentile_ms(50):.1f} ms, p95 {a.percentile_ms(95):.1f} ms (emulated {lat:g} ms);\n"
                f"      the {conc} slots were busy {busy:.0%} of the wall time; ideal at the observed "
                f"latency {observed:.1f} s (ratio {a.phases.router_s / observed:.2f})\n"
                f"    CPU: this process {a.client_cpu_s:.1f} s, emulator {a.emulator_cpu_s:.1f} s; "
                f"load average {a.load[0]:.1f} → {a.load[1]:.1f} on {psutil.cpu_count()} cores (shared)",
                flush=True,
            )

        if "sequential" not in args.skip:
            m = args.sequential_students
            print(f"\n2. Sequential client (one call at a time), measured on {m:,} students", flush=True)
            s = backfill(work / "sequential", m, lat, 1, jitter_ms=args.latency_jitter_ms)
            per_call = s.phases.router_s / s.calls
            per_student = s.phases.router_s / m
            print(
                f"    Router work {s.phases.router_s:.1f} s for {s.calls:,} calls = "
                f"{per_call * 1000:.1f} ms/call, {per_student * 1000:.1f} ms/student",
                flush=True,
            )
            if "latency" not in args.skip:
                by_call = per_call * a.calls
                by_student = per_student * n
                print(
                    f"    extrapolated to {n:,} students: {by_call:.0f} s (per call × {a.calls:,} calls), "
                    f"{by_student:.0f} s (per student × {n:,})\n"
                    f"    concurrent client is {by_call / a.phases.router_s:.1f}× faster by calls, "
                    f"{by_student / a.phases.router_s:.1f}× by students  (target ≥ 10×)  "
                    f"{'OK' if min(by_call, by_student) / a.phases.router_s >= 10 else 'MISSED'}",
                    flush=True,
                )

        if "zero" not in args.skip:
            print(f"\n3. Zero latency, concurrency {conc}: local overhead", flush=True)
            profile = cProfile.Profile() if args.profile else None
            z = backfill(work / "zero", n, 0.0, conc, profile)
            p = z.phases
            per = p.total_s * 1000 / n
            print(
                f"    whole chain {p.total_s:.1f} s = {per:.2f} ms/student  (target ≤ 2 ms)  "
                f"{'OK' if per <= 2 else 'MISSED'}\n"
                f"    by step: "
                + ", ".join(f"{k} {v:.1f} s ({ms(v, n)})" for k, v in p.seconds.items())
                + f"\n    Router work (esi + cards) {p.router_s:.1f} s = {ms(p.router_s, n)}/student, "
                f"{ms(p.router_s, z.calls)}/call over {z.calls:,} calls\n"
                f"    CPU: this process {z.client_cpu_s:.1f} s ({ms(z.client_cpu_s, n)}/student), "
                f"emulator {z.emulator_cpu_s:.1f} s ({ms(z.emulator_cpu_s, n)}/student) = "
                f"{z.emulator_cpu_s / (z.client_cpu_s + z.emulator_cpu_s):.0%} of the CPU used; "
                f"wall {p.total_s:.1f} s on {psutil.cpu_count()} cores, load average {z.load[0]:.1f} → "
                f"{z.load[1]:.1f}",
                flush=True,
            )
            if profile:
                profile.dump_stats(args.profile)
                print(f"\n    profile of the zero-latency run (tottime, top 25) in {args.profile}:")
                pstats.Stats(profile).sort_stats("tottime").print_stats(25)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
