"""Benchmark the vendor export writers: 100,000 cards into <id>.parquet + <id>.zip (target: <= 30 s).

Rows come from a generator, as in production, so peak RSS shows the writer's own memory. Each card gets
a unique random PNG-sized blob (real PNGs are deflate output, so random bytes have their entropy: the
Parquet is not flattered by repeats) and an SVG from a pool of real QR codes (each ZIP member is deflated
on its own, so a pool gives the real compression cost). The rendering time of the pool is reported per
card for reference: it is not part of the writer.

Baselines measured in the same run: copying the same payload bytes to a file (the I/O floor) and the
Parquet file alone. Run: ``.venv/bin/python bench/bench_exports.py [--rows N] [--check]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import segno

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from etl.domain.escn import mint_escn
from etl.exports import EXPORT_SCHEMA, ExportRow, verify_file, write_export

PIC = "999978433"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
T = TypeVar("T")


class PeakRss:
    """Samples this process's RSS every few milliseconds; ``measure`` returns the peak during a call."""

    def __init__(self, interval: float = 0.005) -> None:
        self._proc = psutil.Process()
        self._interval = interval
        self._peak = 0
        self._stop = threading.Event()
        self.cpu = 0.0

    def _sample(self) -> None:
        while not self._stop.wait(self._interval):
            self._peak = max(self._peak, self._proc.memory_info().rss)

    def measure(self, fn: Callable[[], T]) -> tuple[T, float, int, int]:
        """(result, seconds, RSS before, peak RSS during); ``self.cpu`` is the CPU seconds it used."""
        before = self._proc.memory_info().rss
        cpu = self._proc.cpu_times()
        self._peak = before
        self._stop.clear()
        sampler = threading.Thread(target=self._sample, daemon=True)
        sampler.start()
        start = time.perf_counter()
        try:
            result = fn()
        finally:
            elapsed = time.perf_counter() - start
            after = self._proc.cpu_times()
            self.cpu = after.user + after.system - cpu.user - cpu.system
            self._stop.set()
            sampler.join()
        return result, elapsed, before, max(self._peak, self._proc.memory_info().rss)


def qr_pool(size: int) -> tuple[list[bytes], list[bytes], float, str]:
    """Real (PNG, SVG) QR codes for ``size`` card payloads, the seconds per card to make them, and the
    renderer: the project's ``etl.render.qr`` when importable (what production feeds), else segno."""
    payloads = [
        f"https://s.esc-r.eu/{mint_escn(PIC, unix_millis=1_700_000_000_000 + i, clock_seq=1)}"
        for i in range(size)
    ]
    pngs, svgs = [], []
    start = time.perf_counter()
    try:
        from etl.render.qr import render_qr
    except ImportError:
        renderer = f"segno {segno.__version__}"
        for payload in payloads:
            qr = segno.make(payload, error="m")
            png, svg = io.BytesIO(), io.BytesIO()
            qr.save(png, kind="png", scale=4)
            qr.save(svg, kind="svg", scale=4)
            pngs.append(png.getvalue())
            svgs.append(svg.getvalue())
    else:
        renderer = "etl.render.qr"
        for payload in payloads:
            images = render_qr(payload)
            pngs.append(images.png)
            svgs.append(images.svg)
    return pngs, svgs, (time.perf_counter() - start) / size, renderer


def synthetic_rows(n: int, png_size: int, svgs: list[bytes]) -> Iterator[ExportRow]:
    issued, expires = dt.date(2025, 9, 1), dt.date(2026, 10, 31)
    for i in range(n):
        escn = mint_escn(PIC, unix_millis=1_760_000_000_000 + i // 10_000, clock_seq=3, counter=i % 10_000)
        yield ExportRow(
            university="unipi",
            pic=PIC,
            academic_year=2025,
            matricola=str(500_000 + i),
            full_name=f"Studentè Numero {i} D'Àngelo",
            esi=f"urn:schac:personalUniqueCode:int:esi:unipi.it:{700_000 + i}",
            escn=escn,
            card_type="smartcard",
            issued_at=issued,
            expires_at=expires,
            status="active",
            qr_payload=f"https://esc.example/{escn}",
            qr_png=PNG_SIGNATURE + os.urandom(png_size - len(PNG_SIGNATURE)),
            qr_svg=svgs[i % len(svgs)],
        )


def baseline_copy(rows: Iterator[ExportRow], path: Path) -> int:
    """The I/O floor: the same image and text bytes appended to one file, then fsynced."""
    written = 0
    with open(path, "wb") as f:
        for r in rows:
            text = "\t".join(str(getattr(r, n)) for n in EXPORT_SCHEMA.names if n != "qr_png").encode()
            written += f.write(r.qr_png) + f.write(r.qr_svg) + f.write(text)
        f.flush()
        os.fsync(f.fileno())
    return written


def baseline_parquet(rows: Iterator[ExportRow], path: Path, batch_size: int) -> int:
    """The Parquet file alone (same schema and settings family), without validation or the ZIP."""
    with pq.ParquetWriter(path, EXPORT_SCHEMA, compression="zstd") as writer:
        batch: list[ExportRow] = []
        for r in rows:
            batch.append(r)
            if len(batch) == batch_size:
                writer.write_table(_table(batch), row_group_size=batch_size)
                batch = []
        if batch:
            writer.write_table(_table(batch), row_group_size=batch_size)
    return path.stat().st_size


def _table(batch: list[ExportRow]) -> pa.Table:
    return pa.Table.from_pydict(
        {n: [getattr(r, n) for r in batch] for n in EXPORT_SCHEMA.names}, schema=EXPORT_SCHEMA
    )


def report(label: str, seconds: float, cpu: float, rows: int, size: int, extra: str = "") -> None:
    mb = size / (1024 * 1024)
    print(
        f"{label:<18} {seconds:6.2f} s wall {cpu:6.2f} s CPU {rows / seconds:9,.0f} rows/s "
        f"{mb / seconds:6.1f} MB/s ({mb:.1f} MB){extra}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=10_000)
    parser.add_argument("--qr-pool", type=int, default=500, help="real QR codes cycled as SVGs")
    parser.add_argument("--check", action="store_true", help="also test the ZIP with Info-ZIP `unzip -t`")
    parser.add_argument("--dir", type=Path, help="where to write (default: a temporary directory)")
    args = parser.parse_args()
    mb = 1024 * 1024
    n = args.rows

    pngs, svgs, qr_seconds, renderer = qr_pool(args.qr_pool)
    png_size = sum(map(len, pngs)) // len(pngs)
    print(
        f"cores={os.cpu_count()} load={os.getloadavg()[0]:.1f} rows={n:,} batch_size={args.batch_size:,} "
        f"png~{png_size} B svg~{sum(map(len, svgs)) // len(svgs)} B (pool of {len(svgs)})"
    )
    print(
        f"QR rendering (PNG+SVG) with {renderer}, for reference: {qr_seconds * 1000:.2f} ms/card "
        f"= {qr_seconds * 100_000:.0f} s per 100,000 cards"
    )

    def rows(count: int) -> Iterator[ExportRow]:
        return synthetic_rows(count, png_size, svgs)

    workdir = Path(tempfile.mkdtemp(prefix="bench-exports-", dir=args.dir))
    rss = PeakRss()
    try:
        copied, t_copy, _, _ = rss.measure(lambda: baseline_copy(rows(n), workdir / "copy.bin"))
        report("baseline copy", t_copy, rss.cpu, n, copied)
        pq_size, t_pq, _, _ = rss.measure(
            lambda: baseline_parquet(rows(n), workdir / "alone.parquet", args.batch_size)
        )
        report("baseline parquet", t_pq, rss.cpu, n, pq_size)
        (workdir / "copy.bin").unlink()
        (workdir / "alone.parquet").unlink()

        # A quarter-size run first: comparing its peak RSS with the full run's shows how memory grows.
        small = max(n // 4, 1)
        _, _, before_small, peak_small = rss.measure(
            lambda: write_export(rows(small), workdir, "small", batch_size=args.batch_size)
        )
        files, t_full, before_full, peak_full = rss.measure(
            lambda: write_export(rows(n), workdir, "full", batch_size=args.batch_size)
        )
        total = files.parquet.size_bytes + files.zip.size_bytes
        report(
            "write_export",
            t_full,
            rss.cpu,
            n,
            total,
            f" = {t_full / t_copy:.1f}x copy, {t_full / t_pq:.1f}x parquet alone",
        )
        print(
            f"  parquet {files.parquet.size_bytes / mb:.1f} MB, zip {files.zip.size_bytes / mb:.1f} MB; "
            f"{t_full * 100_000 / n:.1f} s per 100,000 cards: target <= 30 s "
            f"{'MET' if t_full * 100_000 / n <= 30 else 'MISSED'}"
        )
        print(
            f"peak RSS growth: {small:,} rows +{(peak_small - before_small) / mb:.0f} MB, "
            f"{n:,} rows +{(peak_full - before_full) / mb:.0f} MB; process peak {peak_full / mb:.0f} MB"
        )

        start = time.perf_counter()
        ok = all(verify_file(f.path, f.sha256) for f in (files.parquet, files.zip))
        t_verify = time.perf_counter() - start
        print(f"verify_file both:  {t_verify:6.2f} s  {total / mb / t_verify:6.1f} MB/s  ok={ok}")
        if args.check:
            if shutil.which("unzip") is None:
                print("unzip -t: skipped (Info-ZIP unzip not installed)")
            else:
                res = subprocess.run(["unzip", "-tqq", str(files.zip.path)], capture_output=True, text=True)
                print(f"unzip -t: {'OK' if res.returncode == 0 else 'FAILED ' + res.stdout + res.stderr}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
