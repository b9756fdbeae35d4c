"""The source sweep (etl.sweep) of a whole university against reading the same rows once.

A demo Esse3 of N careers (SQLite, 2019–2025, with their badges) is ingested into a state DB (SQLite,
then PostgreSQL); then, each in a fresh process: the baseline streams every career and badge row of
every academic year without doing anything with them, through the incremental reads from the start
(bench_ingest's read-only baseline, badges included: the floor any comparison pays), and the sweep
compares every partition's careers and badges with the state DB by key and digest (report mode,
nothing recorded). Memory flatness: the same sweep at N/4 and N.

    python bench/bench_sweep.py [--n 100000] [--pg postgresql+psycopg://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench_ingest import NOW, YEARS, peak_rss_mb, pg_database, source_db  # the script's own folder


def _settings(source_url: str, state_url: str):  # type: ignore[no-untyped-def]
    import tomllib

    from etl.config import parse_settings
    from etl.demo.config import DEMO_ATENEI, demo_config_toml

    raw = tomllib.loads(demo_config_toml(atenei=DEMO_ATENEI[:1]))
    raw["atenei"][0]["esse3_url"] = source_url
    raw["academic_years"] = {"first": YEARS[0], "last": YEARS[-1]}
    return parse_settings(
        raw, home=Path(tempfile.gettempdir()), database_url=state_url, config_path=Path("x")
    )


def child(mode: str, source_url: str, state_url: str) -> dict[str, float]:
    """Runs in a fresh process so its peak RSS is this measurement's own."""
    from etl.assets.badges import ingest_badges
    from etl.assets.careers import ingest_careers
    from etl.partitions import Partition
    from etl.resources.runtime import Runtime
    from etl.store.migrate import upgrade
    from etl.sweep import sweep

    runtime = Runtime(_settings(source_url, state_url))
    source = runtime.esse3("unife")
    rows = 0
    started, cpu = time.perf_counter(), time.process_time()
    if mode == "prepare":
        upgrade(runtime.engine)
        ateneo = runtime.settings.ateneo("unife")
        for y in YEARS:
            rows += ingest_careers(
                runtime.engine, source, ateneo, Partition(y, "unife"), today=NOW.date()
            ).read
            rows += ingest_badges(runtime.engine, source, Partition(y, "unife")).read
    elif mode == "read":  # bench_ingest's baseline: the incremental reads from the start, careers and badges
        for y in YEARS:
            for batch in source.changed_careers(y, {}):
                rows += len(batch)
            for batch in source.changed_badges(y, None):
                rows += len(batch)
    else:
        [result] = sweep(runtime, ["unife"], record=False, today=NOW.date())
        assert result.error is None and result.total == 0, (result.error, result.total)  # nothing drifted
        with source.engine.connect() as conn:
            from sqlalchemy import text

            rows = conn.execute(
                text(
                    'SELECT (SELECT COUNT(*) FROM "P01_STU") + (SELECT COUNT(*) FROM "P01_BADGE" b '
                    'JOIN "P01_STU" s ON s."STU_ID" = b."STU_ID")'
                )
            ).scalar_one()
    seconds, cpu_s = time.perf_counter() - started, time.process_time() - cpu
    runtime.dispose()
    return {"rows": rows, "seconds": seconds, "cpu_s": cpu_s, "peak_mb": peak_rss_mb()}


def measure(mode: str, source_url: str, state_url: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, source_url, state_url],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


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
    sizes = [(args.n // 4, source_db(args.n // 4, folder)), (args.n, source_db(args.n, folder))]
    print(f"{'state DB':<12} {'careers':>8} {'rows':>9} {'read s':>7} {'sweep s':>8} {'× read':>7} "
          f"{'sweep CPU s':>11} {'peak MB':>8}")  # fmt: skip
    for target in ("sqlite", "postgresql"):
        peaks = []
        for n, src in sizes:
            drop = None
            if target == "sqlite":
                state = f"sqlite:///{folder / f'state-{uuid.uuid4().hex[:8]}.sqlite'}"
            else:
                state, drop = pg_database(args.pg)
            try:
                measure("prepare", src, state)
                base = measure("read", src, state)
                r = measure("sweep", src, state)
            finally:
                if drop:
                    drop()
                for f in folder.glob("state-*.sqlite*"):
                    f.unlink()
            peaks.append(r["peak_mb"])
            print(
                f"{target:<12} {n:>8,} {int(r['rows']):>9,} {base['seconds']:>7.2f} {r['seconds']:>8.2f} "
                f"{r['seconds'] / base['seconds']:>7.2f} {r['cpu_s']:>11.2f} {r['peak_mb']:>8.0f}"
            )
        print(f"{'':<12} peak memory N vs N/4: {peaks[1] / peaks[0]:.2f}× (flat ≈ 1)")
    print(f"(measured {dt.date.today()}, load average {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
