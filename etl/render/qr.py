"""QR symbols for card numbers: version 4, error correction M, quiet zone of 4 modules, PNG and SVG.

The symbol comes from zxing-cpp's native encoder (libzint inside): like segno it evaluates all eight
data masks with the standard's penalty rules and keeps the best, but ~20x faster than segno's
pure-Python mask search (the bulk of segno's time). It may pick another mask or mode segmentation
than segno for the same text: the decoded content is identical, the pixels need not be. Pin
zxing-cpp exactly so that re-rendering a card gives the same bytes.
The PNG (1-bit greyscale) and the SVG are written here from the module matrix: a few lines for a
41x41 image, much faster than segno's writers, and byte-stable across Pillow versions.
The symbol is only ever asked for at version 4-M (no error-level boost, no larger version): a payload
that does not fit raises ValueError instead of silently producing a different symbol.
"""

from __future__ import annotations

import os
import re
import struct
import zlib
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from multiprocessing import current_process, get_all_start_methods, get_context
from multiprocessing.context import BaseContext
from typing import Any

import zxingcpp

from etl.config import DEFAULT_QR_BASE
from etl.domain.escn import validate_escn

QR_VERSION = 4
QR_ERROR_LEVEL = "M"
SYMBOL_MODULES = 33  # version 4: 17 + 4 * 4
QUIET_ZONE = 4
TOTAL_MODULES = SYMBOL_MODULES + 2 * QUIET_ZONE  # 41: the standard's minimum rendering size
DEFAULT_SCALE = 4  # px per module in the PNG: 164 x 164 px

# zxing-cpp bitmap bytes (0 dark, 255 light) -> placeholder letters, expanded per scale later.
_TO_LETTERS = bytes.maketrans(b"\x00\xff", b"dl")
_DARK_RUN = re.compile("d+")
# Serial rendering is ~1,400 symbols/s per core; starting a pool costs 0.05-0.7 s: bulk only.
_POOL_THRESHOLD = 2000
_POOL_CHUNK = 1000


@dataclass(frozen=True)
class QrImages:
    payload: str
    png: bytes
    svg: bytes


def qr_payload(escn: str, base_url: str = DEFAULT_QR_BASE) -> str:
    """The verifier URL the card's QR carries: ``<base_url><ESCN>`` (``https://s.esc-r.eu/<ESCN>``)."""
    validate_escn(escn)  # InvalidEscn is a ValueError
    if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
        raise ValueError(f"QR base URL {base_url!r} is not an http(s) URL")
    if not base_url.isascii() or any(c.isspace() for c in base_url):
        raise ValueError(f"QR base URL {base_url!r} must be ASCII without spaces")
    return (base_url if base_url.endswith("/") else base_url + "/") + escn


def qr_modules(payload: str) -> list[bytes]:
    """The 33 rows of the symbol without quiet zone, one byte per module: 0 dark, 255 light."""
    _check_payload(payload)
    try:
        barcode = zxingcpp.create_barcode(
            payload, zxingcpp.BarcodeFormat.QRCode, ec_level=QR_ERROR_LEVEL, version=QR_VERSION
        )
    except ValueError as exc:  # zint: "Input too long for Version 4-M, requires N codewords"
        raise ValueError(f"QR payload of {len(payload)} characters does not fit version 4-M: {exc}") from exc
    image: Any = barcode.to_image(scale=1, add_quiet_zones=False)  # a buffer; its stubs do not say so
    bitmap = memoryview(image)
    if bitmap.shape != (SYMBOL_MODULES, SYMBOL_MODULES):  # the encoder ignored the requested version
        raise RuntimeError(f"QR encoder produced a {bitmap.shape} symbol instead of version 4")
    data = bitmap.tobytes()
    return [data[i : i + SYMBOL_MODULES] for i in range(0, len(data), SYMBOL_MODULES)]


def render_qr(payload: str, scale: int = DEFAULT_SCALE) -> QrImages:
    """PNG (``scale`` px per module, 1-bit greyscale) and SVG of the version 4-M symbol of ``payload``."""
    if not isinstance(scale, int) or not 1 <= scale <= 64:
        raise ValueError(f"QR scale {scale!r} must be an integer between 1 and 64 px per module")
    rows = [row.translate(_TO_LETTERS).decode("ascii") for row in qr_modules(payload)]
    return QrImages(payload=payload, png=_png(rows, scale), svg=_svg(rows, scale))


def render_many(
    payloads: Sequence[str], workers: int | None = None, scale: int = DEFAULT_SCALE
) -> list[QrImages]:
    """``render_qr`` for each payload, same order and bytes as a serial loop.

    ``workers=None`` renders serially below a few thousand payloads and with one process per
    available core above; ``workers=1`` forces serial. Results stay in memory (~4.5 KB each): callers
    with whole universities should pass chunks of a few thousand.
    """
    payloads = list(payloads)
    if workers is None:
        workers = _available_cores() if len(payloads) >= _POOL_THRESHOLD else 1
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, not {workers!r}")
    # A daemonic process (some executors' workers) may not start children: stay serial there.
    if workers == 1 or len(payloads) <= 1 or current_process().daemon:
        return [render_qr(p, scale) for p in payloads]
    for p in payloads:  # cheap checks here, so bad input fails before any process starts
        _check_payload(p)
    chunk = max(1, min(_POOL_CHUNK, -(-len(payloads) // workers)))
    chunks = [payloads[i : i + chunk] for i in range(0, len(payloads), chunk)]
    with ProcessPoolExecutor(max_workers=min(workers, len(chunks)), mp_context=_pool_context()) as pool:
        return [img for part in pool.map(partial(_render_chunk, scale=scale), chunks) for img in part]


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # honours CPU pinning / container cpusets
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _pool_context() -> BaseContext:
    # Never plain fork: callers (Dagster, the API server) run threads, and forking them can deadlock.
    # forkserver forks workers from a clean single-threaded server that has this module preloaded:
    # ~50 ms per pool after the first, against ~0.7 s for spawn re-importing everything each time.
    if "forkserver" not in get_all_start_methods():
        return get_context("spawn")
    ctx = get_context("forkserver")
    ctx.set_forkserver_preload([__name__])  # only takes effect when the server first starts
    return ctx


def _render_chunk(payloads: list[str], scale: int) -> list[QrImages]:
    return [render_qr(p, scale) for p in payloads]


def _check_payload(payload: str) -> None:
    if not isinstance(payload, str) or not payload:
        raise ValueError(f"QR payload must be a non-empty string, not {payload!r}")
    # A URL is ASCII (an IRI is percent-encoded first); non-ASCII would need an ECI or rely on the
    # reader guessing ISO-8859-1, and phone scanners disagree on that.
    if not payload.isascii():
        raise ValueError(f"QR payload {payload!r} is not ASCII")


def _png(rows: list[str], scale: int) -> bytes:
    size = TOTAL_MODULES * scale
    pad = "1" * ((-size) % 8)  # bits past the width in the last byte of a row: ignored by readers
    quiet_bits = "1" * (QUIET_ZONE * scale)
    dark, light = "0" * scale, "1" * scale  # 1-bit greyscale: 0 black, 1 white
    nbytes = (size + 7) // 8
    blank = b"\x00" + b"\xff" * nbytes  # filter type 0 then an all-white row
    raw = [blank * (QUIET_ZONE * scale)]
    for row in rows:
        bits = quiet_bits + row.replace("d", dark).replace("l", light) + quiet_bits + pad
        raw.append((b"\x00" + int(bits, 2).to_bytes(nbytes, "big")) * scale)
    raw.append(blank * (QUIET_ZONE * scale))
    ihdr = struct.pack(">IIBBBBB", size, size, 1, 0, 0, 0, 0)  # 1 bit, greyscale, no interlace
    return b"".join(
        (
            b"\x89PNG\r\n\x1a\n",
            _chunk(b"IHDR", ihdr),
            _chunk(b"IDAT", zlib.compress(b"".join(raw), 9)),
            _chunk(b"IEND", b""),
        )
    )


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


# A run's path pieces, made once: formatting them for each of a symbol's ~300 runs was half its SVG's cost.
_MOVES = [[f"M{x} {y}" for x in range(TOTAL_MODULES)] for y in range(TOTAL_MODULES)]
_RUNS = [f"h{n}v1h-{n}z" for n in range(SYMBOL_MODULES + 1)]


def _svg(rows: list[str], scale: int) -> bytes:
    # One path of horizontal runs in module units; the white rectangle keeps the quiet zone light on
    # any background. No XML declaration, so the same bytes can be inlined into HTML.
    parts = []
    for y, row in enumerate(rows, start=QUIET_ZONE):
        moves = _MOVES[y]
        for run in _DARK_RUN.finditer(row):
            start, end = run.span()
            parts.append(moves[start + QUIET_ZONE])
            parts.append(_RUNS[end - start])
    size = TOTAL_MODULES * scale
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size}" '
        f'viewBox="0 0 {TOTAL_MODULES} {TOTAL_MODULES}" shape-rendering="crispEdges">'
        f'<rect width="{TOTAL_MODULES}" height="{TOTAL_MODULES}" fill="#fff"/>'
        f'<path fill="#000" d="{"".join(parts)}"/></svg>'
    ).encode("ascii")
