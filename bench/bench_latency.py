"""Near-real-time latency of the production deployment (issue 13, goal: 60 s p95).

A deployment on this machine (Dagster on PostgreSQL, `esc-sync serve`: daemon + webserver, Celery
workers, the REST API, the Router emulator at 40 ms a call) watches a demo Esse3 already backfilled.
Enrolments are then finalised in Esse3 at a steady rate (a new person, a finalised career and a
badge, ``DATA_MOD`` = now), and for each the benchmark reports:

- ESI: from ``DATA_MOD`` to ``CODICE_ESI`` written back on the Esse3 career;
- badge: from ``DATA_MOD`` to the first successful badge read (JSON with ESCN and QR payload) from the
  REST API, what the student app would show.

Baseline, measured in the same run before the daemon starts: one finalisation carried through by a
plain `esc-sync sync` (the same work in one process, started by hand the moment the row is written),
so the ratio is the price of the sensor, the queue and the workers.

CPU per event (issue 25): every process on the machine is sampled each second (bench/cpu_sampling.py)
while the deployment idles (``--idle`` seconds: the sensors, the daemon and the queue polling) and while
the events are carried through; an event's CPU is the events' window less the idle rate over it,
summed over the deployment's processes (the benchmark's own process and the REST API it polls left out).

    .venv/bin/python bench/bench_latency.py [--events 20] [--every 6] [--executor celery]

Needs PostgreSQL (``--pg-url``, default $ESC_SYNC_TEST_PG_URL) and RabbitMQ (``--broker``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
from sqlalchemy import bindparam, create_engine, func, select, text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cpu_sampling import Sampler, busy_cpu_seconds

from etl.config import current_academic_year
from etl.demo.config import DEMO_ATENEI
from etl.demo.esse3_db import open_engine
from etl.demo.generate import generate
from etl.demo.schema import P01_ANAPER, P01_BADGE, P01_STU
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

INST = "unife"


def finalise_new_student(esse3_url: str, year: int, seq: int) -> tuple[int, str, float]:
    """A new person with a finalised career of ``year`` and a badge, copied from an existing one;
    returns the career's STU_ID, its matricola and the epoch time written as DATA_MOD."""
    engine = open_engine(esse3_url)
    try:
        with engine.begin() as conn:
            career = (
                conn.execute(
                    select(P01_STU)
                    .where(
                        P01_STU.c.AA_ID == year, P01_STU.c.STA_STU_COD == "A", P01_STU.c.DATA_IMM.is_not(None)
                    )
                    .where(P01_STU.c.STU_ID.in_(select(P01_BADGE.c.STU_ID).where(P01_BADGE.c.ANN_FLG == 0)))
                    .order_by(P01_STU.c.STU_ID)
                    .limit(1)
                )
                .one()
                ._asdict()
            )
            person = (
                conn.execute(select(P01_ANAPER).where(P01_ANAPER.c.PERS_ID == career["PERS_ID"]))
                .one()
                ._asdict()
            )
            badge = (
                conn.execute(
                    select(P01_BADGE)
                    .where(P01_BADGE.c.STU_ID == career["STU_ID"], P01_BADGE.c.ANN_FLG == 0)
                    .limit(1)
                )
                .one()
                ._asdict()
            )
            ids = [
                conn.scalar(select(func.max(c))) + 1
                for c in (P01_ANAPER.c.PERS_ID, P01_STU.c.STU_ID, P01_BADGE.c.BDG_ID)
            ]
            now = dt.datetime.now().replace(microsecond=0)
            matricola = f"9{seq:06d}"
            conn.execute(P01_ANAPER.insert().values(
                person | {"PERS_ID": ids[0], "NOME": "Bench", "COGNOME": "Latenza", "COD_FIS": None,
                          "EMAIL": f"bench.{seq}@example.org", "EMAIL_ATE": f"bench.{seq}@studenti.unife.it",
                          "DATA_MOD": now}
            ))  # fmt: skip
            conn.execute(P01_STU.insert().values(
                career | {"STU_ID": ids[1], "PERS_ID": ids[0], "MATRICOLA": matricola, "CODICE_ESI": None,
                          "DATA_IMM": now.date(), "DATA_MOD": now}
            ))  # fmt: skip
            conn.execute(P01_BADGE.insert().values(
                badge | {"BDG_ID": ids[2], "STU_ID": ids[1], "PERS_ID": ids[0], "DATA_MOD": now,
                         "ESC_ESCN": None, "ESC_QR_URL": None, "ESC_STATO": None, "ESC_QR_PNG": None}
            ))  # fmt: skip
    finally:
        engine.dispose()
    return ids[1], matricola, now.timestamp()


# The API throttles a token whose lookups mostly find nothing (enumeration): a badge is asked for once
# the state DB shows its card confirmed by the Router, what the API itself then reads.
SHOWN_CARDS = text(
    "SELECT b.stu_id FROM badges b JOIN cards c ON c.institution = b.institution AND c.bdg_id = b.bdg_id "
    "WHERE b.institution = :inst AND c.state = 'registered' AND b.stu_id IN :ids"
).bindparams(bindparam("ids", expanding=True))


class Watcher(threading.Thread):
    """Polls every outstanding finalisation: its ESI on the Esse3 career, its badge at the REST API."""

    def __init__(self, esse3_url: str, state_url: str, api: str, token: str) -> None:
        super().__init__(daemon=True)
        self.esse3_url, self.state_url, self.api, self.token = esse3_url, state_url, api, token
        self.events: dict[int, dict[str, float | str]] = {}  # stu_id → times
        self.lock, self.stop = threading.Lock(), threading.Event()

    def add(self, stu_id: int, matricola: str, written_at: float) -> None:
        with self.lock:
            self.events[stu_id] = {"matricola": matricola, "t0": written_at}

    def done(self) -> bool:
        with self.lock:
            return all("badge" in e and "esi" in e for e in self.events.values())

    def run(self) -> None:
        engine, state = open_engine(self.esse3_url), create_engine(self.state_url)
        with httpx.Client(base_url=self.api, headers={"Authorization": f"Bearer {self.token}"}) as http:
            while not self.stop.is_set():
                with self.lock:
                    waiting = {
                        k: dict(v) for k, v in self.events.items() if "badge" not in v or "esi" not in v
                    }
                now = time.time()
                if waiting:
                    query = select(P01_STU.c.STU_ID, P01_STU.c.CODICE_ESI).where(
                        P01_STU.c.STU_ID.in_(list(waiting))
                    )
                    with engine.connect() as conn:
                        esis = dict(conn.execute(query).all())
                    with state.connect() as conn:
                        shown = set(conn.scalars(SHOWN_CARDS, {"inst": INST, "ids": list(waiting)}))
                    for stu_id, e in waiting.items():
                        if "esi" not in e and esis.get(stu_id):
                            self._mark(stu_id, "esi", now)
                        if "badge" not in e and stu_id in shown:
                            r = http.get(f"/v1/universities/{INST}/students/{e['matricola']}/badge")
                            if r.status_code == 200 and r.json().get("qr_payload"):
                                self._mark(stu_id, "badge", time.time())
                time.sleep(0.25)
        engine.dispose()
        state.dispose()

    def _mark(self, stu_id: int, what: str, at: float) -> None:
        with self.lock:
            self.events[stu_id][what] = at


def api_up(api: str) -> bool:
    try:
        return httpx.get(f"{api}/v1/health").status_code == 200
    except httpx.HTTPError:
        return False


def percentiles(values: list[float]) -> str:
    if not values:
        return "no samples"
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return f"p50 {statistics.median(ordered):5.1f} s   p95 {p95:5.1f} s   max {ordered[-1]:5.1f} s"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=20, help="finalisations, one every --every seconds")
    ap.add_argument("--every", type=float, default=6.0)
    ap.add_argument("--students", type=int, default=300, help="demo Esse3 careers per university")
    ap.add_argument("--latency-ms", type=float, default=40.0)
    ap.add_argument("--sensor-interval", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--executor", default="celery", choices=["celery", "in_process", "multiprocess"])
    ap.add_argument("--no-run-host", action="store_true", help="runs start Dagster's way, from code servers")
    ap.add_argument("--idle", type=float, default=30.0, help="seconds of idle deployment measured first")
    add_service_args(ap)
    args = ap.parse_args()

    year = current_academic_year()
    tmp = Path(tempfile.mkdtemp(prefix="esc-sync-latency-"))
    home = tmp / "home"
    home.mkdir()
    an_hour_ago = dt.datetime.now().replace(microsecond=0) - dt.timedelta(hours=1)
    for a in DEMO_ATENEI:
        generate(
            f"sqlite:///{home / f'esse3-{a.code}.sqlite'}", seed=a.seed, students=args.students,
            first_year=year, last_year=year, now=an_hour_ago,
            matricola_base=a.matricola_base, email_domain=f"studenti.{a.domain}",
        )  # fmt: skip
    esse3 = f"sqlite:///{home / f'esse3-{INST}.sqlite'}"
    keys = {a.code: f"bench-{a.code}-key-0123456789abcdef" for a in DEMO_ATENEI}
    faults = FaultConfig(latency_ms=args.latency_ms)
    with (
        fresh_database(args.pg_url, "escsync_bench_state") as state_url,
        fresh_database(args.pg_url, "escsync_bench_dagster", driver="postgresql") as dagster_pg,
        start_emulator({keys[a.code]: a.pic for a in DEMO_ATENEI}, faults=faults) as emu,
    ):
        toml = deploy_toml(
            emu.url, year, year, executor=args.executor, sensor_interval_s=args.sensor_interval,
            run_host=not args.no_run_host,
        )  # fmt: skip
        (home / "esc-sync.toml").write_text(toml, encoding="utf-8")
        env = deployment_env(home, state_url, dagster_pg, args.broker, keys)
        for step in (["deploy", "init"], ["materialize", "--years", str(year)]):
            done = esc_sync(env, *step, timeout=900)
            assert done.returncode == 0, done.stdout + done.stderr
        token_args = ["--name", "bench", "--scope", "badges:read", "--institution", INST]
        made = esc_sync(env, "tokens", "create", *token_args)
        assert made.returncode == 0, made.stderr
        token = made.stdout.strip()
        procs = Processes(env, tmp / "logs")
        api_port = free_port()
        procs.start("api", "api", "--port", str(api_port), "--log-level", "warning")
        api = f"http://127.0.0.1:{api_port}"
        wait_until(lambda: api_up(api), 60, "the API")
        watcher = Watcher(esse3, state_url, api, token)
        watcher.start()
        try:
            # Baseline: the same work by hand, one `esc-sync sync` the moment the row is written.
            stu_id, matricola, t0 = finalise_new_student(esse3, year, 0)
            watcher.add(stu_id, matricola, t0)
            synced = esc_sync(env, "sync", timeout=600)
            assert synced.returncode == 0, synced.stdout + synced.stderr
            wait_until(watcher.done, 60, "the baseline's badge", 0.1)
            baseline = watcher.events.pop(stu_id)
            base_badge = float(baseline["badge"]) - t0

            for w in range(args.workers if args.executor == "celery" else 0):
                procs.start(f"worker-{w}", "worker", "--name", f"w{w}")
            procs.serve(free_port())
            time.sleep(args.sensor_interval * 2)  # the sensors' first ticks: nothing to do
            idle = measure_cpu(lambda: time.sleep(args.idle))
            started = time.time()

            def carry_events() -> None:
                for seq in range(1, args.events + 1):
                    watcher.add(*finalise_new_student(esse3, year, seq))
                    time.sleep(max(0.0, started + seq * args.every - time.time()))
                wait_until(watcher.done, 300, "every badge to be served", 0.5)

            busy = measure_cpu(carry_events)
        finally:
            watcher.stop.set()
            procs.stop_all()
            shutil.rmtree(tmp, ignore_errors=True)  # demo personal data and logs
    esi = [float(e["esi"]) - float(e["t0"]) for e in watcher.events.values()]
    badge = [float(e["badge"]) - float(e["t0"]) for e in watcher.events.values()]
    print(
        f"{args.events} finalisations, one every {args.every:g} s; executor {args.executor}"
        f"{f' on {args.workers} workers' if args.executor == 'celery' else ''}; sensor every "
        f"{args.sensor_interval} s; Router emulator at {args.latency_ms:g} ms a call; runs started "
        f"{'by code servers' if args.no_run_host else 'by the run host'}"
    )
    print(f"  ESI on the Esse3 career      {percentiles(esi)}")
    print(f"  badge served by the REST API {percentiles(badge)}")
    print(f"  baseline: one `esc-sync sync` by hand, badge after {base_badge:.1f} s")
    p50 = statistics.median(badge)
    print(f"  ratio: deployment p50 / baseline = {p50 / base_badge:.2f}x; goal p95 <= 60 s")
    per_event = {
        name: (seconds - idle.rate(name) * busy.seconds) / args.events for name, seconds in busy.cpu.items()
    }
    all_in = (busy.machine - idle.machine / idle.seconds * busy.seconds) / args.events
    print(
        f"  CPU per event, all-in: {all_in:.2f} CPU-s (the machine's busy CPU beyond the idle deployment's "
        f"{idle.machine / idle.seconds:.2f} CPU-s a second; goal <= 1); by component (sampled each second):"
    )
    print("    " + ", ".join(f"{k} {v:.2f}" for k, v in sorted(per_event.items(), key=lambda kv: -kv[1])))
    idle_rates = sorted(((k, idle.rate(k) * 1000) for k in idle.cpu), key=lambda kv: -kv[1])
    unseen = (idle.machine - sum(idle.cpu.values())) / idle.seconds * 1000
    print(
        "  the idle deployment, CPU-ms a second: " + ", ".join(f"{k} {v:.0f}" for k, v in idle_rates)
        + f"; unattributed {unseen:.0f}"
    )  # fmt: skip


@dataclass
class CpuWindow:
    seconds: float
    machine: float  # the machine's busy CPU-seconds, less the benchmark's and the REST API's own
    cpu: dict[str, float]  # CPU-seconds by component, the deployment's processes only

    def rate(self, name: str) -> float:
        return self.cpu.get(name, 0.0) / self.seconds


NOT_MEASURED = ("bench", "REST API")  # the benchmark itself and the badge reads it polls


def measure_cpu(work: Callable[[], None]) -> CpuWindow:
    sampler = Sampler([])
    sampler.start()
    started, machine = time.monotonic(), busy_cpu_seconds()
    work()
    seconds, machine = time.monotonic() - started, busy_cpu_seconds() - machine
    sampler.stop.set()
    sampler.join()
    by_component = sampler.cpu_by_component()
    cpu = {k: v for k, v in by_component.items() if k not in NOT_MEASURED}
    return CpuWindow(seconds, machine - sum(by_component.get(k, 0.0) for k in NOT_MEASURED), cpu)


if __name__ == "__main__":
    main()
