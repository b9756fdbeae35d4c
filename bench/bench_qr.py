"""QR throughput: naive segno loop vs etl.render.qr, measured in the same run, with decode checks.

    python bench/bench_qr.py [--n 2000] [--workers 2] [--rounds 3] [--min-ratio 3]

Prints symbols per second for each path and the ratios; exits 1 if a sampled symbol does not decode
to its payload as a version 4-M QR (checked with zxing-cpp), or if the serial ratio is below
--min-ratio.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, not installed

import segno
import zxingcpp
from PIL import Image

from etl.domain.escn import mint_escn
from etl.render.qr import qr_payload, render_many, render_qr


def naive_png(payload: str) -> bytes:
    out = io.BytesIO()
    segno.make(payload, version=4, error="m", boost_error=False).save(out, kind="png", scale=4)
    return out.getvalue()


def naive_png_svg(payload: str) -> tuple[bytes, bytes]:
    qr = segno.make(payload, version=4, error="m", boost_error=False)
    png, svg = io.BytesIO(), io.BytesIO()
    qr.save(png, kind="png", scale=4)
    qr.save(svg, kind="svg", scale=4)
    return png.getvalue(), svg.getvalue()


def decode(png: bytes) -> zxingcpp.Barcode | None:
    return zxingcpp.read_barcode(Image.open(io.BytesIO(png)), formats=zxingcpp.BarcodeFormat.QRCode)


def check(png: bytes, payload: str) -> str | None:
    """None if the PNG decodes to ``payload`` as a version 4, EC level M QR; else what is wrong."""
    got = decode(png)
    if got is None:
        return "does not decode"
    if got.text != payload:
        return f"decodes to {got.text!r}"
    version, level = got.extra.get("Version"), got.ec_level
    if str(version) != "4" or level != "M":
        return f"is version {version} level {level}, not 4-M"
    return None


def rate(n: int, fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t0)


def report(label: str, rates: list[float]) -> float:
    """Median of the rounds: rounds alternate between paths, so load from other processes hits both."""
    med = statistics.median(rates)
    print(f"{label:<46} {med:>9,.0f} /s   (rounds: {', '.join(f'{r:,.0f}' for r in rates)})")
    return med


def payloads(n: int, seed: int = 42) -> list[str]:
    rnd = random.Random(seed)
    start = 1_767_225_600_000  # 2026-01-01T00:00Z: ESCNs minted over a few days, random clock sequences
    return [
        qr_payload(
            mint_escn(
                "999978433", unix_millis=start + rnd.randrange(400_000_000), clock_seq=rnd.getrandbits(14)
            )
        )
        for _ in range(n)
    ]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="symbols per measurement (default 2000)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="process pool size")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians are reported")
    ap.add_argument("--min-ratio", type=float, default=3.0, help="fail below this serial ratio")
    args = ap.parse_args(argv)
    ps = payloads(args.n)
    naive_n = min(args.n, 500)  # segno is slow: a smaller sample gives the same per-second figure
    print(f"{args.n} payloads like {ps[0]} ({os.cpu_count()} cores)")

    sample_ps = ps[:naive_n]
    runs: dict[str, list[float]] = {"base": [], "base_svg": [], "serial": [], "pooled": []}
    for _ in range(args.rounds):
        runs["base"].append(rate(naive_n, lambda: [naive_png(p) for p in sample_ps]))
        runs["serial"].append(rate(args.n, lambda: [render_qr(p) for p in ps]))
        runs["base_svg"].append(rate(naive_n, lambda: [naive_png_svg(p) for p in sample_ps]))
        runs["pooled"].append(rate(args.n, lambda: render_many(ps, workers=args.workers)))
    base = report("segno make+save(png) loop  [baseline]", runs["base"])
    report("segno make+save(png)+save(svg) loop", runs["base_svg"])
    serial = report("render_qr loop, PNG+SVG (one process)", runs["serial"])
    pooled = report(f"render_many, PNG+SVG, workers={args.workers}", runs["pooled"])
    print(
        f"ratio vs baseline: serial {serial / base:.1f}x, pooled {pooled / base:.1f}x"
        f"   (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)"
    )

    failures = []
    sample = random.Random(7).sample(range(args.n), min(50, args.n))
    ours = render_many([ps[i] for i in sample], workers=1)
    for i, img in zip(sample, ours, strict=True):
        for what, png in (("ours", img.png), ("segno", naive_png(ps[i]))):
            problem = check(png, ps[i])
            if problem:
                failures.append(f"{what} PNG of {ps[i]} {problem}")
    print(
        f"decode check (zxing-cpp): {len(sample)} sampled payloads, ours and segno's:"
        f" {'all decode to the payload as version 4-M' if not failures else f'{len(failures)} FAILED'}"
    )
    for f in failures[:10]:
        print("  " + f)
    if serial / base < args.min_ratio:
        print(f"serial ratio {serial / base:.1f}x is below the {args.min_ratio}x target")
        return 1
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
