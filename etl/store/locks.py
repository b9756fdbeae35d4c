"""One partition, one writer: a run takes its partition's lock before it touches the partition.

PostgreSQL: a session advisory lock on a connection held for the step (released by the server when
the process dies, on any machine), with the holder written beside it so a refused run can say who
holds it. SQLite (one machine): the ``partition_locks`` row itself, taken over when the process that
holds it is gone. A second run of a busy partition stops at once with one line naming the holder:
it never repeats the first one's Router calls.
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, Row, delete, insert, select, text, update
from sqlalchemy.exc import IntegrityError

from etl.errors import EscSyncError, ExitCode
from etl.store.models import PartitionLock, utcnow


class PartitionBusy(EscSyncError):
    """Another run holds the partition."""

    exit_code = ExitCode.BUSY


# Locks this process holds, by partition, with the run holding each: a run's steps re-enter the lock
# the command took for the whole run (another run id in this process is refused like any other).
_held: dict[str, str] = {}


@contextmanager
def partition_lock(engine: Engine, partition_key: str, run_id: str) -> Iterator[None]:
    if _held.get(partition_key) == run_id:
        yield
        return
    with _partition_lock(engine, partition_key, run_id):
        _held[partition_key] = run_id
        try:
            yield
        finally:
            del _held[partition_key]


@contextmanager
def _partition_lock(engine: Engine, partition_key: str, run_id: str) -> Iterator[None]:
    me = {"partition_key": partition_key, "run_id": run_id, "pid": os.getpid(), "host": socket.gethostname()}
    if engine.dialect.name == "postgresql":
        with engine.connect() as session:
            key = int.from_bytes(
                hashlib.blake2b(f"esc-sync:{partition_key}".encode(), digest_size=8).digest(),
                "big",
                signed=True,
            )
            if not session.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar_one():
                session.rollback()
                raise _busy(engine, partition_key)
            session.commit()
            try:
                with engine.begin() as conn:
                    conn.execute(delete(PartitionLock).where(PartitionLock.partition_key == partition_key))
                    conn.execute(insert(PartitionLock).values(**me, acquired_at=utcnow()))
                yield
            finally:
                _release(engine, me)
                session.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                session.commit()
        return
    _take_sqlite(engine, me)
    try:
        yield
    finally:
        _release(engine, me)


def _take_sqlite(engine: Engine, me: dict[str, object]) -> None:
    key = str(me["partition_key"])
    for _ in range(3):  # a lost race re-reads the holder
        try:
            with engine.begin() as conn:
                holder = _holder(conn, key)
                if holder is None:
                    conn.execute(insert(PartitionLock).values(**me, acquired_at=utcnow()))
                    return
                if holder.host != me["host"] or process_alive(holder.pid):
                    break  # held by a live run
                stale = (PartitionLock.partition_key == key, PartitionLock.run_id == holder.run_id)
                if conn.execute(
                    update(PartitionLock).where(*stale).values(**me, acquired_at=utcnow())
                ).rowcount:
                    return  # taken over from a process that is gone
        except IntegrityError:  # another run inserted first: look again
            continue
    raise _busy(engine, key)


def _release(engine: Engine, me: dict[str, object]) -> None:
    with engine.begin() as conn:
        conn.execute(
            delete(PartitionLock).where(
                PartitionLock.partition_key == me["partition_key"], PartitionLock.run_id == me["run_id"]
            )
        )


def _holder(conn: Connection, partition_key: str) -> Row[Any] | None:
    table = PartitionLock.__table__
    return conn.execute(select(table).where(table.c.partition_key == partition_key)).first()


def _busy(engine: Engine, partition_key: str) -> PartitionBusy:
    with engine.connect() as conn:
        h = _holder(conn, partition_key)
    who = (
        f"run {h.run_id[:8]} (process {h.pid} on {h.host}, since {h.acquired_at:%Y-%m-%d %H:%M:%S} UTC)"
        if h is not None
        else "another run"
    )
    return PartitionBusy(
        f"partition {partition_key} is being run by {who}: not run twice; retry when it ends"
    )


def process_alive(pid: int) -> bool:
    """Whether a process of this machine exists (another user's counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
