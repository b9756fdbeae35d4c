"""Ingest N careers from a demo Esse3 (SQLite) into the state DB, on SQLite and on PostgreSQL.

Prints rows/s and peak memory for each, against a baseline measured in the same run: streaming the
same source rows without writing anything (the floor any ingestion pays). Memory flatness: the same
ingest at N/4 and N, each in a fresh process.

    python bench/bench_ingest.py [--n 100000] [--pg postgresql+psycopg://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

NOW = dt.datetime(2026, 11, 2, 9, 0)
YEARS = range(2019, 2026)


def source_db(n: int, folder: Path) -> str:
    from etl.demo.generate import generate, is_generated

    url = f"sqlite:///{folder / f'esse3-{n}.sqlite'}"
    if not is_generated(url):
        generate(url, seed=42, students=n, now=NOW)
    return url


def child(mode: str, source_url: str, state_url: str) -> dict[str, float]:
    """Runs in a fresh process so its peak RSS is this measurement's own."""
    import tomllib

    from etl.assets.careers import ingest_careers
    from etl.config import parse_settings
    from etl.demo.config import demo_config_toml
    from etl.partitions import Partition
    from etl.resources.esse3 import Esse3Source
    from etl.store.db import make_engine
    from etl.store.migrate import upgrade

    source = Esse3Source("unife", source_url)
    started, cpu = time.perf_counter(), time.process_time()
    rows = 0
    if mode == "read":
        for y in YEARS:
            for batch in source.changed_careers(y, {}, dt.timedelta(0)):
                rows += len(batch)
    else:
        engine = make_engine(state_url)
        upgrade(engine)
        settings = parse_settings(
            tomllib.loads(demo_config_toml()), home=Path("."), database_url=state_url, config_path=Path("x")
        )
        ateneo = settings.ateneo("unife")
        started, cpu = time.perf_counter(), time.process_time()
        for y in YEARS:
            r = ingest_careers(engine, source, ateneo, Partition(y, "unife"), today=NOW.date())
            rows += r.read
    seconds, cpu_s = time.perf_counter() - started, time.process_time() - cpu
    peak_mb = peak_rss_mb()
    # rows per CPU-second of this process: what the machine's load cannot inflate (the DB
    # server's own work is not in it).
    return {
        "rows": rows,
        "seconds": seconds,
        "rows_per_s": rows / seconds,
        "rows_per_cpu_s": rows / cpu_s,
        "peak_mb": peak_mb,
    }


def peak_rss_mb() -> float:
    """This process's peak RSS. Linux's ru_maxrss survives exec, so a child would report its parent's
    peak at fork time (the generator's, after generating a source); VmHWM starts afresh at exec."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux and BSD


def measure(mode: str, source_url: str, state_url: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, source_url, state_url],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def pg_database(base: str) -> tuple[str, callable]:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"escsync_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    return make_url(base).set(database=name).render_as_string(hide_password=False), drop


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(child(*sys.argv[2:5])))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument(
        "--pg",
        default=os.environ.get("ESC_SYNC_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"),
    )
    args = ap.parse_args()
    folder = Path(tempfile.gettempdir()) / "esc-sync-bench"
    folder.mkdir(exist_ok=True)
    print(f"generating demo Esse3 sources ({args.n // 4:,} and {args.n:,} careers, cached in {folder}) ...")
    small, big = source_db(args.n // 4, folder), source_db(args.n, folder)

    base = measure("read", big, "")
    print(
        f"\nbaseline: stream {base['rows']:,} source rows, no writes: {base['rows_per_s']:,.0f} rows/s, "
        f"peak {base['peak_mb']:.0f} MB"
    )
    print(f"{'target':<12} {'N':>8} {'rows/s':>9} {'rows/cpu-s':>10} {'× baseline time':>16} {'peak MB':>8}")
    for target in ("sqlite", "postgresql"):
        peaks = []
        for _n, src in ((args.n // 4, small), (args.n, big)):
            drop = None
            if target == "sqlite":
                state = f"sqlite:///{folder / f'state-{uuid.uuid4().hex[:8]}.sqlite'}"
            else:
                state, drop = pg_database(args.pg)
            try:
                r = measure("ingest", src, state)
            finally:
                if drop:
                    drop()
                if target == "sqlite":
                    for f in folder.glob("state-*.sqlite*"):
                        f.unlink()
            ratio = (r["seconds"] / r["rows"]) / (base["seconds"] / base["rows"])
            peaks.append(r["peak_mb"])
            print(
                f"{target:<12} {int(r['rows']):>8,} {r['rows_per_s']:>9,.0f} {r['rows_per_cpu_s']:>10,.0f} "
                f"{ratio:>16.1f} "
                f"{r['peak_mb']:>8.0f}"
            )
        print(f"{'':<12} peak memory N vs N/4: {peaks[1] / peaks[0]:.2f}× (flat ≈ 1)")


if __name__ == "__main__":
    main()
