"""The export pipeline at one university's scale: 100,000 registered cards in a SQLite state DB →
`qr_images` (render + store) → `export_files` (full export), then the steady state (second QR run,
an incremental export).

Baseline measured in the same run: a naive loop of ``segno.make(...).save(png)`` on a sample,
extrapolated to every card. Targets: QR work >= 3x the naive loop, full export of 100,000 cards
<= 30 s. Run: ``.venv/bin/python bench/bench_export_pipeline.py [--cards N] [--database-url URL]``;
exits 1 when a target is missed or a sampled symbol does not decode to its payload as version 4-M.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import os
import random
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, not installed

import psutil
import segno
import zxingcpp
from PIL import Image
from sqlalchemy import Engine, select, update

from etl.assets.exports import ExportPolicy, export_partition
from etl.assets.qr import render_partition_qr
from etl.config import DEFAULT_QR_BASE
from etl.domain.escn import mint_escn
from etl.domain.esi import compose_esi
from etl.partitions import Partition
from etl.store.bulk import Bulk
from etl.store.db import make_engine
from etl.store.migrate import upgrade
from etl.store.models import Card, QrImage, utcnow

PIC = "999978433"
PART = Partition(2025, "unife")
T = TypeVar("T")
FIRST = ["Giulia", "Marco", "Zoë", "Niccolò", "Chiara", "Luca", "Anna", "Matteo"]
LAST = ["Rossi", "Bianchi", "D'Àngelo", "Esposito", "Romano", "Colombo", "Ricci", "Marino"]


def measure(fn: Callable[[], T]) -> tuple[T, float, float]:
    """(result, seconds, peak RSS in MB during the call), RSS sampled every 10 ms."""
    proc, peak, stop = psutil.Process(), [0], threading.Event()

    def sample() -> None:
        while not stop.wait(0.01):
            peak[0] = max(peak[0], proc.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    peak[0] = proc.memory_info().rss
    sampler.start()
    start = time.perf_counter()
    try:
        result = fn()
    finally:
        elapsed = time.perf_counter() - start
        stop.set()
        sampler.join()
    return result, elapsed, peak[0] / 2**20


def seed(engine: Engine, n: int) -> None:
    """n careers, each with one registered card, in one transaction of bulk inserts."""
    year, now = PART.academic_year, utcnow()
    careers, cards = [], []
    for i in range(n):
        careers.append(
            (PART.institution, i, 500_000 + i, "PERS_ID", f"{100_000 + i}", year, "CS", "Informatica", "L",
             "A", True, FIRST[i % 8], LAST[i // 8 % 8], now, "0" * 32, now, now)
        )  # fmt: skip
        escn = mint_escn(PIC, unix_millis=1_760_000_000_000 + i // 10_000, clock_seq=7, counter=i % 10_000)
        cards.append(
            (escn, PART.institution, year, i, i, compose_esi("unife.it", 500_000 + i), "SMART_PASSIVE",
             dt.date(year, 9, 1), dt.date(year + 1, 10, 31), "ACTIVE", "ACTIVE", "registered", now, now)
        )  # fmt: skip
    with engine.begin() as conn:
        bulk = Bulk(conn)
        bulk.upsert(
            "careers",
            ("institution", "stu_id", "pers_id", "person_key", "matricola", "academic_year", "course_code",
             "course_name", "course_type", "status", "finalised", "first_name", "last_name",
             "source_data_mod", "row_hash", "created_at", "updated_at"),
            ("institution", "stu_id"),
            careers,
            temporal=("source_data_mod", "created_at", "updated_at"),
        )  # fmt: skip
        bulk.upsert(
            "cards",
            ("escn", "institution", "academic_year", "bdg_id", "stu_id", "esi", "card_type", "issued_at",
             "expires_at", "desired_status", "router_status", "state", "changed_at", "created_at"),
            ("escn",),
            cards,
            temporal=("issued_at", "expires_at", "changed_at", "created_at"),
        )  # fmt: skip


def naive_png(payload: str) -> bytes:
    out = io.BytesIO()
    segno.make(payload, version=4, error="m", boost_error=False).save(out, kind="png", scale=4)
    return out.getvalue()


def decode_problem(png: bytes, payload: str) -> str | None:
    got = zxingcpp.read_barcode(Image.open(io.BytesIO(png)), formats=zxingcpp.BarcodeFormat.QRCode)
    if got is None:
        return "does not decode"
    if got.text != payload:
        return f"decodes to {got.text!r}"
    if got.extra.get("Version") != "4" or got.ec_level != "M":
        return f"is version {got.extra.get('Version')}-{got.ec_level}, not 4-M"
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cards", type=int, default=100_000)
    ap.add_argument("--naive-sample", type=int, default=400, help="segno symbols timed for the baseline")
    ap.add_argument("--database-url", help="state DB (default: a SQLite file in a temporary directory)")
    ap.add_argument("--export-target", type=float, default=30.0, help="seconds for the full export")
    ap.add_argument("--min-ratio", type=float, default=3.0, help="QR work vs the naive loop")
    args = ap.parse_args(argv)
    failures: list[str] = []

    with tempfile.TemporaryDirectory(prefix="esc-bench-") as tmp:
        home = Path(tmp)
        engine = make_engine(args.database_url or f"sqlite:///{home / 'state.sqlite'}")
        upgrade(engine)
        print(f"{args.cards:,} registered cards, {engine.dialect.name} state DB, {os.cpu_count()} cores")
        _, secs, _ = measure(lambda: seed(engine, args.cards))
        print(f"seed careers + cards (bulk inserts)        {secs:7.2f} s")

        with engine.connect() as conn:
            escns = list(conn.execute(select(Card.escn).limit(args.naive_sample)).scalars())
        payloads = [DEFAULT_QR_BASE + e for e in escns]

        def naive_rate() -> float:
            _, secs, _ = measure(lambda: [naive_png(p) for p in payloads])
            return len(payloads) / secs

        # The baseline is timed before and after the QR run and averaged: the machine's load drifts.
        before = naive_rate()
        qr, secs, rss = measure(lambda: render_partition_qr(engine, PART, DEFAULT_QR_BASE))
        after = naive_rate()
        naive = (before + after) / 2
        rate = qr.rendered / secs
        print(
            f"naive segno.make().save(png) loop          {naive:7.0f} /s  (before {before:.0f}, after"
            f" {after:.0f}; {len(payloads)} symbols) -> {args.cards / naive:,.0f} s for {args.cards:,}"
        )
        print(
            f"qr_images: render PNG+SVG + store          {rate:7.0f} /s  {secs:6.2f} s for {qr.rendered:,}"
            f" (peak RSS {rss:.0f} MB)  -> {rate / naive:.1f}x the naive loop"
        )
        if rate / naive < args.min_ratio:
            failures.append(f"QR ratio {rate / naive:.1f}x below {args.min_ratio}x")
        again, secs, _ = measure(lambda: render_partition_qr(engine, PART, DEFAULT_QR_BASE))
        print(f"qr_images again (nothing to render)        {secs:7.2f} s  ({again.rendered} rendered)")
        if again.rendered:
            failures.append("second QR run rendered symbols")

        with engine.connect() as conn:
            every = list(conn.execute(select(Card.escn).order_by(Card.escn)).scalars())
            sample = random.Random(3).sample(every, min(50, len(every)))
            rows = conn.execute(
                select(QrImage.escn, QrImage.payload, QrImage.png).where(QrImage.escn.in_(sample))
            )
            bad = [f"{r.escn} {p}" for r in rows if (p := decode_problem(r.png, r.payload))]
        print(f"decode check (zxing-cpp) on {len(sample)} stored PNGs    {'ok' if not bad else bad[:3]}")
        failures += bad

        policy = ExportPolicy()
        full, secs, rss = measure(lambda: export_partition(engine, PART, home=home, pic=PIC, policy=policy))
        print(
            f"export_files: full export                  {secs:7.2f} s  {full.rows:,} cards"
            f" ({full.rows / secs:,.0f} /s; parquet {full.parquet_bytes / 2**20:.1f} MB,"
            f" zip {full.zip_bytes / 2**20:.1f} MB, peak RSS {rss:.0f} MB)"
        )
        if secs > args.export_target:
            failures.append(f"full export took {secs:.1f} s > {args.export_target} s")

        with engine.begin() as conn:  # 1 % of the cards change
            changed = every[::100]
            conn.execute(update(Card).where(Card.escn.in_(changed)).values(changed_at=utcnow()))
        incr, secs, _ = measure(lambda: export_partition(engine, PART, home=home, pic=PIC, policy=policy))
        print(f"export_files: incremental ({incr.rows:,} changed)      {secs:7.2f} s  ({incr.plan.kind})")
        _, secs, _ = measure(lambda: export_partition(engine, PART, home=home, pic=PIC, policy=policy))
        print(f"export_files: nothing changed              {secs:7.2f} s")
        engine.dispose()

    for f in failures:
        print("FAILED: " + f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
