"""Write the vendor export files of a batch of cards: ``<export_id>.parquet`` and ``<export_id>.zip``.

Both files are built in one pass over the rows, so the rows can come from a generator. Memory stays flat
in the row count (one batch of rows at a time) except for the set of ESCNs seen, kept to refuse a
duplicate, which would collide as ZIP member names (about 120 bytes a card).

The ZIP is written by a small sequential writer rather than ``zipfile``: every member's CRC and sizes are
known before its header, so nothing is patched afterwards, the output is hashed as it is written, and
the central directory is spooled to disk. ``zipfile`` kept a ~500-byte ``ZipInfo`` per member in memory
(100 MB for 100,000 cards), seeked three times per member and was the bulk of the run time.

Each file is written to a hidden ``.part`` temporary file in the target directory, fsynced, and renamed
over its final name only when both are complete: a failure midway never leaves a partial file under a
final name. A hard kill (SIGKILL, power loss) can leave a ``.<name>.part`` behind, never a final name.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import logging
import os
import re
import tempfile
import zlib
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from etl.domain.escn import InvalidEscn, validate_escn
from etl.domain.esi import InvalidEsi, validate_esi
from etl.exports.schema import EXPORT_SCHEMA, MANIFEST_COLUMNS, MANIFEST_SCHEMA, ExportRow
from etl.exports.zipstream import HashingWriter, MemberSpool, ZipStream
from etl.files import PartFile, fsync_directory

log = logging.getLogger(__name__)

# The export id becomes a file name: no separators, no leading dot (temporaries are dot files).
_EXPORT_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_STRING_FIELDS = ("university", "pic", "matricola", "full_name", "esi", "card_type", "status", "qr_payload")
_COMPRESSION = "zstd"
# Dictionary encoding only pays for low-cardinality columns; on per-card values (names, ESCNs, images)
# it is built, overflows its page and is thrown away for every row group.
_DICTIONARY_COLUMNS = ["university", "pic", "academic_year", "card_type", "issued_at", "expires_at", "status"]
_PARQUET_OPTIONS: dict[str, Any] = {"compression": _COMPRESSION, "use_dictionary": _DICTIONARY_COLUMNS}
_DEFLATE_THREADS = max(1, min(2, os.cpu_count() or 1))
# Deflating 100,000 small SVGs is the largest cost of an export: on etl.render.qr's 4 KB SVGs level 1
# takes half the CPU of zlib's default 6, for SVGs at 28% of their size instead of 24%.
_SVG_DEFLATE_LEVEL = 1

MANIFEST_CSV = "manifest.csv"
MANIFEST_PARQUET = "manifest.parquet"
SHA256SUMS = "SHA256SUMS"


class InvalidRowError(ValueError):
    """A row the writer refuses. The message names the field and the ESCN, never the person's data."""

    def __init__(self, field: str, escn: str | None, reason: str) -> None:
        self.field = field
        self.escn = escn
        shown = repr(escn if len(escn) <= 40 else escn[:40] + "…") if escn else "<missing>"
        super().__init__(f"invalid export row (ESCN {shown}): {field} {reason}")


@dataclass(frozen=True, slots=True)
class ExportFile:
    path: Path
    rows: int
    size_bytes: int
    sha256: str


@dataclass(frozen=True, slots=True)
class ExportFiles:
    export_id: str
    parquet: ExportFile
    zip: ExportFile


def validate_row(row: ExportRow) -> None:
    """Raise ``InvalidRowError`` (a ``ValueError``) for the first missing or malformed field of ``row``."""
    if not isinstance(row, ExportRow):
        raise TypeError(f"export rows must be ExportRow, not {type(row).__name__}")
    escn = row.escn if isinstance(row.escn, str) and row.escn.strip() else None
    if escn is None:
        raise InvalidRowError("escn", None, "is missing")
    try:
        # The ESCN names ZIP members: the domain rule (a lower-case UUID) also rules out path traversal.
        validate_escn(escn)
    except InvalidEscn as exc:
        raise InvalidRowError("escn", escn, f"is not a valid ESCN: {exc}") from None
    values = [getattr(row, name) for name in _STRING_FIELDS]
    for name, value in zip(_STRING_FIELDS, values, strict=True):
        if not isinstance(value, str) or not value.strip():
            reason = "is missing" if value is None or value == "" else "must be a non-blank str"
            raise InvalidRowError(name, escn, reason)
    # Control characters (a stray newline, NUL) break naive CSV readers and file names; the domain
    # validators' "$" also lets one trailing newline through. One search for the common, clean case.
    if _CONTROL_RE.search(escn) or _CONTROL_RE.search("".join(values)):
        name = next(
            n
            for n, v in zip(("escn", *_STRING_FIELDS), (escn, *values), strict=True)
            if _CONTROL_RE.search(v)
        )
        raise InvalidRowError(name, escn, "contains a control character")
    try:
        validate_esi(row.esi)
    except InvalidEsi as exc:  # its messages never repeat the personal code
        raise InvalidRowError("esi", escn, f"is not a valid ESI: {exc}") from None
    year = row.academic_year
    if year is None:
        raise InvalidRowError("academic_year", escn, "is missing")
    if isinstance(year, bool) or not isinstance(year, int) or not 1900 <= year <= 2999:
        raise InvalidRowError("academic_year", escn, "must be a four-digit year (int)")
    for name in ("issued_at", "expires_at"):
        value = getattr(row, name)
        if value is None:
            raise InvalidRowError(name, escn, "is missing")
        # A datetime is a date subclass: refuse it rather than silently drop its time and time zone.
        if not isinstance(value, dt.date) or isinstance(value, dt.datetime):
            raise InvalidRowError(name, escn, "must be a datetime.date")
    if row.expires_at < row.issued_at:
        raise InvalidRowError("expires_at", escn, "is before issued_at")
    for name, looks_right, what in (
        ("qr_png", lambda b: b.startswith(_PNG_SIGNATURE), "a PNG image"),
        ("qr_svg", lambda b: b"<svg" in b[:1024], "an SVG image"),
    ):
        value = getattr(row, name)
        if value is None or value == b"":
            raise InvalidRowError(name, escn, "is missing")
        if not isinstance(value, bytes) or not looks_right(value):
            raise InvalidRowError(name, escn, f"must be the bytes of {what}")


def write_export(
    rows: Iterable[ExportRow], directory: Path, export_id: str, *, batch_size: int = 10_000
) -> ExportFiles:
    """Write ``<export_id>.parquet`` and ``<export_id>.zip`` into ``directory`` (which must exist).

    Rows are validated as they stream; an invalid or duplicate-ESCN row raises ``InvalidRowError`` and
    leaves no file behind. Existing files with the same names are replaced atomically.
    """
    if not isinstance(export_id, str) or not _EXPORT_ID_RE.fullmatch(export_id):
        raise ValueError("export_id must be 1-128 chars of [A-Za-z0-9._-], not starting with '.'")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError("batch_size must be an int of at least 1")
    directory = Path(directory)
    parts: list[PartFile] = []
    try:
        parts.append(PartFile(directory / f"{export_id}.parquet"))
        parts.append(PartFile(directory / f"{export_id}.zip"))
        parquet_out, zip_out = (HashingWriter(part.file) for part in parts)
        count = _write_files(rows, parquet_out, zip_out, directory, batch_size)
        for part in parts:
            part.finish()
        for part in parts:
            part.commit()
    except BaseException as e:
        for part in parts:
            part.discard()
        if isinstance(e, OSError) and e.errno and not e.filename:  # pyarrow's and zipfile's name no file
            raise OSError(e.errno, os.strerror(e.errno), str(directory / f"{export_id}.*")) from e
        raise
    fsync_directory(directory)
    log.info(
        "export %s written: %d cards, parquet %d bytes, zip %d bytes",
        export_id,
        count,
        parquet_out.size,
        zip_out.size,
    )
    return ExportFiles(
        export_id=export_id,
        parquet=ExportFile(parts[0].final, count, parquet_out.size, parquet_out.hexdigest()),
        zip=ExportFile(parts[1].final, count, zip_out.size, zip_out.hexdigest()),
    )


def sha256_file(path: Path) -> str:
    """The SHA-256 hex digest of a file, read in chunks."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def verify_file(path: Path, sha256: str) -> bool:
    """True if the file's content still hashes to ``sha256``. A missing file raises ``FileNotFoundError``."""
    expected = sha256.lower() if isinstance(sha256, str) else ""
    if not _SHA256_RE.fullmatch(expected):
        raise ValueError("sha256 must be 64 hex digits")
    return sha256_file(path) == expected


def _write_files(
    rows: Iterable[ExportRow],
    parquet_out: HashingWriter,
    zip_out: HashingWriter,
    scratch: Path,
    batch_size: int,
) -> int:
    """Stream ``rows`` into both outputs; return the number of rows."""
    # Scratch files are nameless (unlinked at once) and live in the export directory, so they share its
    # permissions and free space. The manifests and SHA256SUMS can only join the ZIP after every card.
    with (
        MemberSpool(scratch, deflate=True) as manifest_csv,
        MemberSpool(scratch, deflate=False) as manifest_parquet,  # zstd inside already
        MemberSpool(scratch, deflate=True) as sums,
        tempfile.TemporaryFile(dir=scratch) as central_directory,
        pq.ParquetWriter(parquet_out, EXPORT_SCHEMA, **_PARQUET_OPTIONS) as parquet_writer,
        pq.ParquetWriter(manifest_parquet, MANIFEST_SCHEMA, **_PARQUET_OPTIONS) as manifest_writer,
        ThreadPoolExecutor(_DEFLATE_THREADS, thread_name_prefix="export-deflate") as pool,
    ):
        archive = ZipStream(zip_out, central_directory, dt.datetime.now(dt.UTC))
        manifest_csv.write(_csv_lines([MANIFEST_COLUMNS]))

        def flush(batch: list[ExportRow]) -> None:
            # Deflating the SVGs is the largest cost; it runs on the pool while this thread does the Parquet.
            svgs = [r.qr_svg for r in batch]
            step = -(-len(svgs) // _DEFLATE_THREADS)
            deflating = [pool.submit(_deflate_all, svgs[i : i + step]) for i in range(0, len(svgs), step)]
            columns = {name: [getattr(r, name) for r in batch] for name in EXPORT_SCHEMA.names}
            table = pa.Table.from_pydict(columns, schema=EXPORT_SCHEMA)
            parquet_writer.write_table(table, row_group_size=batch_size)
            manifest_writer.write_table(table.select(list(MANIFEST_COLUMNS)), row_group_size=batch_size)
            manifest_csv.write(_csv_lines(zip(*(columns[name] for name in MANIFEST_COLUMNS), strict=True)))
            deflated = [blob for future in deflating for blob in future.result()]
            lines = []
            for r, svg_deflated in zip(batch, deflated, strict=True):
                png, svg = f"qr/{r.escn}.png", f"qr/{r.escn}.svg"
                archive.add(png, r.qr_png)  # stored: PNG data is deflated already
                archive.add(svg, r.qr_svg, deflated=svg_deflated)
                lines.append(f"{hashlib.sha256(r.qr_png).hexdigest()}  {png}\n")
                lines.append(f"{hashlib.sha256(r.qr_svg).hexdigest()}  {svg}\n")
            sums.write("".join(lines).encode("ascii"))

        seen: set[str] = set()
        batch: list[ExportRow] = []
        for row in rows:
            validate_row(row)
            if row.escn in seen:
                raise InvalidRowError("escn", row.escn, "appears twice in the export")
            seen.add(row.escn)
            batch.append(row)
            if len(batch) >= batch_size:
                flush(batch)
                batch = []
        if batch:
            flush(batch)
        manifest_writer.close()
        for name, spool in ((MANIFEST_CSV, manifest_csv), (MANIFEST_PARQUET, manifest_parquet)):
            archive.add_spool(name, spool)
            sums.write(f"{spool.hexdigest()}  {name}\n".encode("ascii"))
        archive.add_spool(SHA256SUMS, sums)
        archive.close()
    return len(seen)


def _deflate_all(blobs: list[bytes]) -> list[bytes]:
    """Raw deflate streams (no zlib header), as ZIP stores them. zlib releases the GIL while it works."""
    return [zlib.compress(blob, _SVG_DEFLATE_LEVEL, wbits=-15) for blob in blobs]


# A cell starting with one of these is read as a formula by spreadsheets (OWASP "CSV injection").
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def neutralise_cell(value: object) -> object:
    """A text cell a spreadsheet would run as a formula, prefixed with an apostrophe (OWASP's rule).
    Numbers and dates are left alone: a negative number is a number, not a formula."""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def _csv_lines(records: Iterable[Iterable[object]]) -> bytes:
    """RFC 4180 CSV (minimal quoting, CRLF), UTF-8 without BOM; dates print as ISO 8601; text cells
    that would start a formula are neutralised (the Parquet manifest keeps the values as they are)."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerows(
        [neutralise_cell(v) for v in record] for record in records
    )
    return buffer.getvalue().encode("utf-8")
