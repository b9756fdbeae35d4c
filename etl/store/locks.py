"""One partition, one writer: a run claims its partition before it touches the partition.

The claim is the ``partition_locks`` row (who holds it, for the message a refused run prints). It
belongs to a *run*, not a process, because a run's steps may execute in several processes at once
(the multiprocess executor, Celery workers on several machines) and must share it. Two kinds:

- A **command's** claim (`esc-sync materialize`/`sync`, for its whole run): the row names the
  command's process. On PostgreSQL the command also holds a session advisory lock, which the server
  releases when the process dies on any machine; on SQLite (one machine) a dead process is seen
  directly. Released when the run ends.
- A **step's** claim (runs the daemon launched): pid 0; the run's other steps re-enter it from any
  process; it lapses when Dagster says the run is over (succeeded, failed, or marked failed by run
  monitoring after its worker died), so it needs no release.

A second run of a claimed partition stops at once with one line naming the holder: it never repeats
the first one's Router calls.
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, Row, delete, insert, select, text, update
from sqlalchemy.exc import IntegrityError

from etl.errors import EscSyncError, ExitCode
from etl.store.models import PartitionLock, utcnow

STEP_PID = 0  # the claim of a daemon-launched run's steps: shared by the run, no one process owns it

RunOver = Callable[[str], bool]  # run id → whether that run has ended (Dagster's run status)


class PartitionBusy(EscSyncError):
    """Another run holds the partition (a step retried in a while finds it free)."""

    exit_code = ExitCode.BUSY
    transient = True


# Claims this process holds for a command's whole run: the run's steps re-enter them.
_held: dict[str, str] = {}


@contextmanager
def partition_lock(
    engine: Engine, partition_key: str, run_id: str, run_over: RunOver, *, whole_run: bool = False
) -> Iterator[None]:
    """Claim ``partition_key`` for ``run_id`` (``whole_run``: a command, for its whole run; otherwise a
    step, sharing the claim with the run's other steps) or raise ``PartitionBusy``."""
    if _held.get(partition_key) == run_id:
        yield
        return
    if not whole_run:
        _claim(engine, partition_key, run_id, STEP_PID, run_over)
        yield
        return
    with _advisory_lock(engine, partition_key):
        _claim(engine, partition_key, run_id, os.getpid(), run_over, commands_checked=True)
        _held[partition_key] = run_id
        try:
            yield
        finally:
            del _held[partition_key]
            with engine.begin() as conn:
                conn.execute(
                    delete(PartitionLock).where(
                        PartitionLock.partition_key == partition_key, PartitionLock.run_id == run_id
                    )
                )


def _claim(
    engine: Engine, key: str, run_id: str, pid: int, run_over: RunOver, commands_checked: bool = False
) -> None:
    """``commands_checked``: the caller holds the advisory lock, so no other command's run is alive."""
    me = {"partition_key": key, "run_id": run_id, "pid": pid, "host": socket.gethostname()}
    for _ in range(3):  # a lost insert race re-reads the holder
        try:
            with engine.begin() as conn:
                holder = _holder(conn, key, for_update=True)
                if holder is None:
                    conn.execute(insert(PartitionLock).values(**me, acquired_at=utcnow()))
                    return
                if holder.run_id != run_id and not _lapsed(engine, holder, run_over, commands_checked):
                    break
                # ours (another step of the run), or left by a run that is over: take it
                conn.execute(
                    update(PartitionLock)
                    .where(PartitionLock.partition_key == key, PartitionLock.run_id == holder.run_id)
                    .values(**me, acquired_at=utcnow())
                )
                return
        except IntegrityError:  # another run inserted first: look again
            continue
    raise _busy(engine, key)


def _lapsed(engine: Engine, holder: Row[Any], run_over: RunOver, commands_checked: bool) -> bool:
    if holder.pid == STEP_PID:
        return run_over(holder.run_id)
    if engine.dialect.name == "postgresql":  # a command's process is alive while it holds its lock
        return commands_checked or _advisory_free(engine, holder.partition_key)
    return holder.host == socket.gethostname() and not process_alive(holder.pid)


def _advisory_key(key: str) -> int:
    return int.from_bytes(
        hashlib.blake2b(f"esc-sync:{key}".encode(), digest_size=8).digest(), "big", signed=True
    )


@contextmanager
def _advisory_lock(engine: Engine, key: str) -> Iterator[None]:
    """PostgreSQL: held by a command for its whole run, on a connection of its own, so the server
    frees it if the process dies. A command that gets it knows no other command's run is alive."""
    if engine.dialect.name != "postgresql":
        yield
        return
    with engine.connect() as session:
        if not session.execute(
            text("SELECT pg_try_advisory_lock(:k)"), {"k": _advisory_key(key)}
        ).scalar_one():
            session.rollback()
            raise _busy(engine, key)
        session.commit()
        try:
            yield
        finally:
            session.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _advisory_key(key)})
            session.commit()


def _advisory_free(engine: Engine, key: str) -> bool:
    """Whether no command holds ``key``'s advisory lock (its holder's process has ended)."""
    with engine.connect() as session:
        free = bool(
            session.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": _advisory_key(key)}).scalar_one()
        )
        if free:
            session.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _advisory_key(key)})
        session.commit()
        return free


def _holder(conn: Connection, partition_key: str, for_update: bool = False) -> Row[Any] | None:
    query = select(PartitionLock.__table__).where(PartitionLock.partition_key == partition_key)
    return conn.execute(query.with_for_update() if for_update else query).first()


def _busy(engine: Engine, partition_key: str) -> PartitionBusy:
    with engine.connect() as conn:
        h = _holder(conn, partition_key)
    if h is None:
        who = "another run"
    else:
        where = f"its steps on {h.host}" if h.pid == STEP_PID else f"process {h.pid} on {h.host}"
        who = f"run {h.run_id[:8]} ({where}, since {h.acquired_at:%Y-%m-%d %H:%M:%S} UTC)"
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
