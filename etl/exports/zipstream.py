"""A ZIP archive written as a stream (ZIP64 where needed) with members spooled to nameless scratch
files, and a writer that hashes what passes through it: what the export writer needs to build a ZIP
of hundreds of thousands of members in flat memory."""

from __future__ import annotations

import datetime as dt
import hashlib
import struct
import tempfile
import zlib
from pathlib import Path
from typing import IO, Any

_COPY_CHUNK = 1 << 20
_DEFLATE_LEVEL = 6  # the manifests and SHA256SUMS: one stream each, cheap at the default level

# --- ZIP -----------------------------------------------------------------------------------------------

# Above these, ZIP64 records are used. Like CPython's zipfile, sizes and offsets switch at 2 GiB, not
# 4 GiB, for readers that treat the 32-bit fields as signed.
_ZIP64_LIMIT = (1 << 31) - 1
_ZIP_COUNT_LIMIT = 0xFFFF
_LOCAL_HEADER = struct.Struct("<IHHHHHIIIHH")
_CENTRAL_HEADER = struct.Struct("<IHHHHHHIIIHHHHHII")
_ZIP64_END = struct.Struct("<IQHHIIQQQQ")
_ZIP64_LOCATOR = struct.Struct("<IIQI")
_END = struct.Struct("<IHHHHIIH")
_STORED, _DEFLATED = 0, 8
_MADE_BY_UNIX = 3 << 8
_REGULAR_FILE_644 = 0o100644 << 16


class ZipStream:
    """Appends ZIP members whose CRC and sizes are known up front (PKWARE APPNOTE 6.3: local header,
    data, central directory, ZIP64 end records when needed, end record). Never seeks, never patches."""

    def __init__(self, out: HashingWriter, central_directory: IO[bytes], created: dt.datetime) -> None:
        self._out = out
        self._central = central_directory
        self._count = 0
        # One timestamp for every member: DOS date/time (2-second resolution, no zone; this is UTC).
        self._dos_time = created.hour << 11 | created.minute << 5 | created.second // 2
        self._dos_date = (created.year - 1980) << 9 | created.month << 5 | created.day

    def add(self, name: str, data: bytes, *, deflated: bytes | None = None) -> None:
        """Add ``data`` stored, or deflated if its raw deflate stream (``_deflate_all``) is given."""
        payload = data if deflated is None else deflated
        method = _STORED if deflated is None else _DEFLATED
        self._header(name, method, zlib.crc32(data), len(payload), len(data))
        self._out.write(payload)

    def add_spool(self, name: str, spool: MemberSpool) -> None:
        spool.finish()
        method = _DEFLATED if spool.deflate else _STORED
        self._header(name, method, spool.crc, spool.compressed_size, spool.size)
        spool.copy_to(self._out)

    def _header(self, name: str, method: int, crc: int, compressed: int, size: int) -> None:
        offset = self._out.size
        encoded = name.encode("utf-8")
        flags = 0 if name.isascii() else 0x800  # bit 11: the name is UTF-8
        # The local header's ZIP64 extra must carry both sizes; the central one only the fields that overflow.
        local_zip64 = size > _ZIP64_LIMIT or compressed > _ZIP64_LIMIT
        local_extra = struct.pack("<HHQQ", 1, 16, size, compressed) if local_zip64 else b""
        self._out.write(
            _LOCAL_HEADER.pack(
                0x04034B50,
                45 if local_zip64 else 20,
                flags,
                method,
                self._dos_time,
                self._dos_date,
                crc,
                0xFFFFFFFF if local_zip64 else compressed,
                0xFFFFFFFF if local_zip64 else size,
                len(encoded),
                len(local_extra),
            )
            + encoded
            + local_extra
        )
        wide = [v for v in (size, compressed, offset) if v > _ZIP64_LIMIT]
        extra = struct.pack(f"<HH{len(wide)}Q", 1, 8 * len(wide), *wide) if wide else b""
        version = 45 if wide else 20
        self._central.write(
            _CENTRAL_HEADER.pack(
                0x02014B50,
                _MADE_BY_UNIX | 45,
                version,
                flags,
                method,
                self._dos_time,
                self._dos_date,
                crc,
                0xFFFFFFFF if compressed > _ZIP64_LIMIT else compressed,
                0xFFFFFFFF if size > _ZIP64_LIMIT else size,
                len(encoded),
                len(extra),
                0,
                0,
                0,
                _REGULAR_FILE_644,
                0xFFFFFFFF if offset > _ZIP64_LIMIT else offset,
            )
            + encoded
            + extra
        )
        self._count += 1

    def close(self) -> None:
        start = self._out.size
        self._central.seek(0)
        while chunk := self._central.read(_COPY_CHUNK):
            self._out.write(chunk)
        length = self._out.size - start
        count = self._count
        if count >= _ZIP_COUNT_LIMIT or start > _ZIP64_LIMIT or length > _ZIP64_LIMIT:
            zip64_end = self._out.size
            self._out.write(
                _ZIP64_END.pack(0x06064B50, 44, _MADE_BY_UNIX | 45, 45, 0, 0, count, count, length, start)
            )
            self._out.write(_ZIP64_LOCATOR.pack(0x07064B50, 0, zip64_end, 1))
            count = min(count, 0xFFFF)
            start, length = min(start, 0xFFFFFFFF), min(length, 0xFFFFFFFF)
        self._out.write(_END.pack(0x06054B50, 0, 0, count, count, length, start, 0))


class MemberSpool:
    """A member whose content is only complete at the end (manifests, SHA256SUMS): written to an
    anonymous temporary file, deflated on the way in if asked, with the CRC, sizes and SHA-256 its
    header and checksum line need. File-like enough for ``pq.ParquetWriter`` (which only appends)."""

    closed = False

    def __init__(self, directory: Path, *, deflate: bool) -> None:
        self.deflate = deflate
        self._file = tempfile.TemporaryFile(dir=directory)  # noqa: SIM115 - closed by __exit__
        self._compressor = zlib.compressobj(_DEFLATE_LEVEL, zlib.DEFLATED, -15) if deflate else None
        self._sha = hashlib.sha256()
        self.crc = 0
        self.size = 0
        self.compressed_size = 0

    def __enter__(self) -> MemberSpool:
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()

    def write(self, data: Any) -> int:
        if self.closed:
            raise ValueError("write to a finished member spool")
        view = memoryview(data)
        self._sha.update(view)
        self.crc = zlib.crc32(view, self.crc)
        self.size += view.nbytes
        self._store(self._compressor.compress(view) if self._compressor else view)
        return view.nbytes

    def _store(self, data: Any) -> None:
        self._file.write(data)
        self.compressed_size += len(data)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass  # pq.ParquetWriter may close its sink; the spool lives until it is copied into the ZIP

    def hexdigest(self) -> str:
        return self._sha.hexdigest()

    def finish(self) -> None:
        """End the content: no write after this; sizes and CRC are final."""
        if self._compressor:
            self._store(self._compressor.flush())
            self._compressor = None
        self.closed = True

    def copy_to(self, out: HashingWriter) -> None:
        self._file.seek(0)
        while chunk := self._file.read(_COPY_CHUNK):
            out.write(chunk)


# --- files ---------------------------------------------------------------------------------------------


class HashingWriter:
    """Write-only file wrapper that hashes and counts the bytes going through. It has no ``seek``: the
    Parquet writer only appends, and a writer that seeked would fail loudly instead of hashing wrong."""

    closed = False

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self._sha = hashlib.sha256()
        self.size = 0

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self._sha.update(view)
        self.size += view.nbytes
        self._raw.write(view)
        return view.nbytes

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self._raw.flush()

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        self.closed = True  # the underlying file belongs to PartFile

    def hexdigest(self) -> str:
        return self._sha.hexdigest()
