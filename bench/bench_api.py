"""Benchmark the REST service on loopback: badge JSON and QR image latency with 50 concurrent clients
(target p95 <= 20 ms) and export download throughput (target >= 50 MB/s for a 100,000-row export).

The server runs as `esc-sync api` would (``python -m etl.api.cli api``, one uvicorn process) over a
seeded SQLite state DB; the client is aiohttp in this process, sharing the machine's cores with it.
Baselines measured in the same run: ``/v1/health`` (no token, one ``SELECT 1``: the framework's floor)
under the same load, and for downloads a raw read of the file and a plain Starlette ``StaticFiles``
server in another uvicorn process.

Latency is measured two ways. Closed loop: 50 clients each sending its next request as soon as the
previous answer arrives (a saturation test: latency is then mostly queueing, ~50 / throughput). Paced:
the same 50 concurrent clients sending a fixed total rate (``--rate``), the shape of real traffic,
where latency is service time plus what queueing the rate causes.

    .venv/bin/python bench/bench_api.py [--cards 20000] [--export-rows 100000] [--seconds 5] [--rate 400]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from etl.api.tokens import create_token
from etl.config import Settings, parse_settings
from etl.demo.config import demo_config_toml
from etl.domain.escn import mint_escn
from etl.exports import ExportRow
from etl.store.db import make_engine
from etl.store.migrate import upgrade
from tests.api_seed import SeededCard, seed_cards, seed_export

UNI = "unife"
MB = 1024 * 1024
STATIC_SERVER = """
import sys, uvicorn
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
app = Starlette(routes=[Mount("/", StaticFiles(directory=sys.argv[1]))])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning", access_log=False)
"""


@dataclass
class Phase:
    label: str
    latencies: list[float]
    errors: int
    seconds: float
    server_cpu: float

    def line(self, baseline: Phase | None = None) -> str:
        lat = sorted(self.latencies)
        n = len(lat)
        p50, p95, p99 = (lat[min(n - 1, int(q * n))] * 1000 for q in (0.50, 0.95, 0.99))
        ratio = ""
        if baseline is not None:
            base95 = sorted(baseline.latencies)[int(0.95 * len(baseline.latencies))] * 1000
            ratio = f"  p95 x{p95 / base95:.2f} of health"
        return (
            f"{self.label:<34} p50 {p50:6.2f} ms  p95 {p95:6.2f} ms  p99 {p99:6.2f} ms  "
            f"{n / self.seconds:7.0f} req/s  server CPU {self.server_cpu / max(n, 1) * 1000:5.2f} ms/req"
            f"  errors {self.errors}{ratio}"
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            httpx.get(url, timeout=1.0, trust_env=False)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit(f"server at {url} did not answer within {timeout} s")


def export_rows(settings: Settings, cards: list[SeededCard], n: int) -> Iterator[ExportRow]:
    """``n`` rows with unique ESCNs, cycling the seeded cards' real QR images and data."""
    pic = settings.ateneo(UNI).pic
    for i in range(n):
        c = cards[i % len(cards)]
        assert c.images is not None
        escn = mint_escn(pic, unix_millis=1_760_000_000_000 + i // 10_000, clock_seq=3, counter=i % 10_000)
        yield ExportRow(
            university=UNI, pic=pic, academic_year=c.academic_year, matricola=f"{500_000 + i}",
            full_name=c.full_name, esi=c.esi, escn=escn, card_type=c.card_type, issued_at=c.issued_at,
            expires_at=c.expires_at, status=c.status, qr_payload=c.payload, qr_png=c.images.png,
            qr_svg=c.images.svg,
        )  # fmt: skip


async def closed_loop(
    session: aiohttp.ClientSession, urls: list[str], concurrency: int, seconds: float, headers: dict[str, str]
) -> tuple[list[float], int, float]:
    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds

    async def worker(seed: int) -> None:
        nonlocal errors
        rnd = random.Random(seed)
        while time.perf_counter() < stop:
            url = urls[rnd.randrange(len(urls))]
            t0 = time.perf_counter()
            async with session.get(url, headers=headers) as r:
                await r.read()
                ok = r.status == 200
            latencies.append(time.perf_counter() - t0)
            errors += not ok

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return latencies, errors, time.perf_counter() - t0


async def paced(
    session: aiohttp.ClientSession,
    urls: list[str],
    concurrency: int,
    seconds: float,
    rate: float,
    headers: dict[str, str],
) -> tuple[list[float], int, float]:
    """``concurrency`` clients, each sending at ``rate / concurrency`` per second on a fixed schedule
    (no coordinated omission: a late request is timed from when it was due)."""
    latencies: list[float] = []
    errors = 0
    interval = concurrency / rate
    begin = time.perf_counter()

    async def worker(seed: int) -> None:
        nonlocal errors
        rnd = random.Random(seed)
        due = begin + rnd.random() * interval
        while due < begin + seconds:
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            async with session.get(urls[rnd.randrange(len(urls))], headers=headers) as r:
                await r.read()
                ok = r.status == 200
            latencies.append(time.perf_counter() - due)
            errors += not ok
            due += interval

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return latencies, errors, time.perf_counter() - begin


async def download(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str]
) -> tuple[int, float, str]:
    h = hashlib.sha256()
    size = 0
    t0 = time.perf_counter()
    async with session.get(url, headers=headers) as r:
        r.raise_for_status()
        async for chunk in r.content.iter_chunked(1 << 20):
            size += len(chunk)
            h.update(chunk)
    return size, time.perf_counter() - t0, h.hexdigest()


def raw_read(path: Path) -> tuple[int, float]:
    t0 = time.perf_counter()
    size = 0
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            size += len(chunk)
            h.update(chunk)
    return size, time.perf_counter() - t0


async def run_client(args: argparse.Namespace, api: str, static: str, token: str, server: psutil.Process,
                     cards: list[SeededCard], files: dict[str, tuple[Path, str]]) -> None:  # fmt: skip
    auth = {"Authorization": f"Bearer {token}"}
    connector = aiohttp.TCPConnector(limit=args.concurrency, force_close=False)
    targets = {
        "health (baseline, no token)": [f"{api}/v1/health"],
        "badge JSON by matricola": [
            f"{api}/v1/universities/{UNI}/students/{c.matricola}/badge" for c in cards
        ],
        "badge JSON by ESCN": [f"{api}/v1/cards/{c.escn}/badge" for c in cards],
        "QR PNG by ESCN": [f"{api}/v1/cards/{c.escn}/qr.png" for c in cards],
        "QR SVG by ESCN": [f"{api}/v1/cards/{c.escn}/qr.svg" for c in cards],
    }
    async with aiohttp.ClientSession(connector=connector) as session:
        for urls in targets.values():  # warm-up: connections, caches, compiled statements
            await closed_loop(session, urls, args.concurrency, 0.5, auth)
        for mode in ("closed", "paced"):
            title = (
                f"closed loop, {args.concurrency} clients back to back"
                if mode == "closed"
                else f"paced, {args.concurrency} clients sending {args.rate:.0f} req/s in total"
            )
            print(f"\n-- latency, {title}, {args.seconds:.0f} s each")
            baseline = None
            for label, urls in targets.items():
                cpu0 = sum(server.cpu_times()[:2])
                if mode == "closed":
                    lat, errors, secs = await closed_loop(session, urls, args.concurrency, args.seconds, auth)
                else:
                    lat, errors, secs = await paced(
                        session, urls, args.concurrency, args.seconds, args.rate, auth
                    )
                phase = Phase(label, lat, errors, secs, sum(server.cpu_times()[:2]) - cpu0)
                print(phase.line(baseline))
                baseline = baseline or phase

        print(f"\n-- downloads (1 client; best of {args.repeat})")
        for which, (path, sha) in files.items():
            size = path.stat().st_size
            best_raw = min(raw_read(path)[1] for _ in range(args.repeat))
            print(f"{which:<8} {size / MB:7.1f} MB  raw read+sha256 {size / MB / best_raw:7.0f} MB/s")
            for label, url in (
                ("static", f"{static}/{path.name}"),
                ("API", f"{api}/v1/exports/{path.stem}/{which}"),
            ):
                best, digest = None, ""
                for _ in range(args.repeat):
                    got, secs, digest = await download(session, url, auth)
                    assert got == size, (label, got, size)
                    best = secs if best is None else min(best, secs)
                assert best is not None
                ok = "sha256 ok" if digest == sha else "SHA256 MISMATCH"
                print(f"{'':8} {'':10} {label:<6} {size / MB / best:7.0f} MB/s  ({best:.2f} s, {ok})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cards", type=int, default=10_000, help="students/cards seeded (with QR images)")
    parser.add_argument("--export-rows", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=400.0, help="total requests/s of the paced runs")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", type=Path, help="work directory (default: a temporary one, removed)")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="bench-api-", dir=args.dir))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        (home / "esc-sync.toml").write_text(demo_config_toml())
        db_url = f"sqlite:///{home / 'state.sqlite'}"
        settings = parse_settings(
            tomllib.loads(demo_config_toml()),
            home=home,
            database_url=db_url,
            config_path=home / "esc-sync.toml",
        )
        engine = make_engine(db_url)
        upgrade(engine)
        t0 = time.perf_counter()
        year = dt.date.today().year  # cards valid today, so badges read ACTIVE
        cards = seed_cards(engine, settings, UNI, args.cards, academic_year=year)
        t1 = time.perf_counter()
        files = seed_export(
            engine,
            home / "exports",
            f"{UNI}-{year}-full",
            UNI,
            year,
            export_rows(settings, cards, args.export_rows),
        )
        t2 = time.perf_counter()
        token = create_token(
            engine, name="bench", scopes=["exports:read", "badges:read"], institutions=[UNI],
            known_institutions=settings.codes, rate_per_minute=1_000_000, matricola_rate_per_minute=1_000_000,
        ).token  # fmt: skip
        engine.dispose()
        print(
            f"cores={os.cpu_count()} load={os.getloadavg()[0]:.1f}  seeded {args.cards:,} cards with QR in "
            f"{t1 - t0:.1f} s; {args.export_rows:,}-row export written in {t2 - t1:.1f} s "
            f"(parquet {files.parquet.size_bytes / MB:.1f} MB, zip {files.zip.size_bytes / MB:.1f} MB)"
        )

        env = {
            **os.environ,
            "ESC_SYNC_HOME": str(home),
            "ESC_SYNC_CONFIG": str(home / "esc-sync.toml"),
            "ESC_SYNC_DATABASE_URL": db_url,
        }
        api_port, static_port = free_port(), free_port()
        api = subprocess.Popen(
            [sys.executable, "-m", "etl.api.cli", "api", "--port", str(api_port), "--log-level", "warning"],
            env=env, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        procs.append(api)
        static = subprocess.Popen(
            [sys.executable, "-c", STATIC_SERVER, str(home / "exports"), str(static_port)], env=env
        )
        procs.append(static)
        api_url, static_url = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{static_port}"
        wait_http(api_url + "/v1/health", api)
        wait_http(static_url + "/", static)
        paths = {
            "parquet": (files.parquet.path, files.parquet.sha256),
            "zip": (files.zip.path, files.zip.sha256),
        }
        asyncio.run(run_client(args, api_url, static_url, token, psutil.Process(api.pid), cards, paths))
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        if args.dir is None:
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
