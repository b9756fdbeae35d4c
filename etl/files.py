"""Files written whole or not at all: a hidden part file beside the target, fsynced, renamed over it."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO


class PartFile:
    """A hidden temporary file beside ``final``, renamed over it only by ``commit``."""

    def __init__(self, final: Path) -> None:
        self.final = final
        fd, name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".part")
        self.path = Path(name)
        self.file: IO[bytes] = os.fdopen(fd, "w+b")

    def finish(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()

    def commit(self) -> None:
        os.replace(self.path, self.final)

    def discard(self) -> None:
        with contextlib.suppress(OSError):  # closing flushes: on a full disk that fails again
            self.file.close()
        self.path.unlink(missing_ok=True)


def write_atomically(target: Path, data: bytes, *, sync_directory: bool = True) -> None:
    """``target`` holds ``data`` after this returns, or is untouched if it raises (disk full...).
    ``sync_directory=False``: the caller fsyncs the folder once after writing many files into it."""
    part = PartFile(target)
    try:
        part.file.write(data)
        part.finish()
        part.commit()
    except BaseException:
        part.discard()
        raise
    if sync_directory:
        fsync_directory(target.parent)


def fsync_directory(directory: Path) -> None:
    # Makes the renames durable: without it a crash could leave the old name after a "successful" write.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
