"""Serving export files: open and verify cheaply, then stream a byte range from the verified descriptor.

Every request checks the size (one ``fstat``); the full SHA-256 is computed once per file version,
identified by (device, inode, mtime, size), and remembered. The descriptor that was verified is the
one streamed, so a file replaced meanwhile (the writer renames a new file over the old one) can never
mix into a response: the old inode stays readable until closed.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from collections.abc import Awaitable, Callable, Mapping

import anyio.to_thread
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

CHUNK = 1 << 20  # 1 MiB reads: a few hundred µs each, so the event loop and threads hop rarely
_MAX_REMEMBERED = 10_000


class FileProblem(Exception):
    """The export file is missing, unreadable, or not the file the export row describes."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class FileVerifier:
    def __init__(self) -> None:
        self._verified: dict[tuple[int, int, int, int], str] = {}
        self._lock = threading.Lock()
        self._hashing: dict[tuple[int, int, int, int], threading.Lock] = {}

    def open_verified(self, path: str, size: int, sha256: str) -> int:
        """An open descriptor on ``path`` whose size and SHA-256 are the expected ones; the caller closes
        it. Raises FileProblem otherwise. Blocking: run it in a thread."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise FileProblem("missing") from None
        except OSError as exc:
            raise FileProblem(f"unreadable ({exc.strerror or type(exc).__name__})") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise FileProblem("not a regular file")
            if st.st_size != size:
                raise FileProblem(f"size {st.st_size} instead of {size}")
            key = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
            if self._verified.get(key) != sha256:
                self._verify(fd, key, sha256)
            return fd
        except BaseException:
            os.close(fd)
            raise

    def _verify(self, fd: int, key: tuple[int, int, int, int], sha256: str) -> None:
        with self._lock:
            lock = self._hashing.setdefault(key, threading.Lock())
        with lock:  # concurrent first downloads of one file hash it once
            if self._verified.get(key) == sha256:
                return
            digest = hash_descriptor(fd)
            if digest != sha256:
                raise FileProblem("SHA-256 mismatch")
            with self._lock:
                if len(self._verified) >= _MAX_REMEMBERED:
                    self._verified.clear()
                self._verified[key] = sha256
                self._hashing.pop(key, None)


def hash_descriptor(fd: int) -> str:
    h = hashlib.sha256()
    offset = 0
    while chunk := os.pread(fd, CHUNK, offset):
        h.update(chunk)
        offset += len(chunk)
    return h.hexdigest()


class FileRangeResponse(Response):
    """Streams ``length`` bytes from ``offset`` of an open descriptor, then closes it and reports the
    bytes actually sent to ``on_done`` (the audit row), also when the client went away midway."""

    def __init__(
        self,
        fd: int,
        offset: int,
        length: int,
        *,
        status_code: int,
        headers: Mapping[str, str],
        media_type: str,
        on_done: Callable[[int], Awaitable[None]],
    ) -> None:
        super().__init__(
            status_code=status_code, headers={**headers, "content-length": str(length)}, media_type=media_type
        )
        self._fd = fd
        self._offset = offset
        self._length = length
        self._on_done = on_done

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sent = 0
        try:
            await send(
                {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
            )
            position, remaining = self._offset, self._length
            if scope.get("method") == "HEAD":  # the headers (length, ETag) without the bytes
                remaining = 0
            if remaining == 0:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            while remaining > 0:
                chunk = await anyio.to_thread.run_sync(os.pread, self._fd, min(CHUNK, remaining), position)
                if not chunk:  # truncated under us: the short body makes the client see a failed transfer
                    break
                remaining -= len(chunk)
                position += len(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": remaining > 0})
                sent += len(chunk)
        finally:
            os.close(self._fd)
            await self._on_done(sent)
