"""The per-request lookups of the badge and QR endpoints, on raw DBAPI connections.

These run on every badge view and QR fetch, where SQLAlchemy's per-query work (pool checkout and
reset, Connection and Result objects: ~150-300 µs) and a threadpool hop (~100-300 µs) cost far more
than the indexed query itself (~20 µs on SQLite). So they keep a few DBAPI connections checked out
of the engine's pool for good and run hand-written SQL on them:

* SQLite: one connection, queried inline on the event loop. In WAL mode (``make_engine`` sets it)
  readers never wait for writers, and Python's sqlite3 opens no transaction for a SELECT, so each
  query sees the latest commit.
* Other databases (PostgreSQL): up to ``pool_size`` autocommit connections, used from the threadpool
  since a network round trip may wait.

Only cards the Router confirmed (state registered) are shown, as the exports do: a pending
card's number does not verify yet. A retired card (its career changed person) is not shown: its
career now names someone else. A DBAPI error invalidates the connection (a new one is made next
time) and surfaces as SQLAlchemy's OperationalError, which the API answers with a 503.

Student lookups go careers (institution, matricola) -> badges (institution, stu_id) -> cards
(institution, bdg_id): every step is an index. The matricola is matched in a subquery because SQLite,
without statistics, otherwise starts from the university's badges and scans them.
"""

from __future__ import annotations

import datetime as dt
import queue
import threading
import time
from typing import Any, NamedTuple

from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError
from starlette.concurrency import run_in_threadpool

from etl.domain.states import CardStatus, SyncState

# A card shown: one the Router confirmed, not retired
_SHOWN = f"c.state = '{SyncState.REGISTERED}' AND c.retired_at IS NULL AND c.deleted_at IS NULL"
_BADGE_COLUMNS = (
    "c.escn, c.institution, c.academic_year, c.esi, c.card_type, c.issued_at, c.expires_at, "
    "c.desired_status, k.matricola, k.first_name, k.last_name, k.course_name"
)
_STUDENT_CARDS = (
    "FROM careers k "
    "JOIN badges b ON b.institution = k.institution AND b.stu_id = k.stu_id "
    "JOIN cards c ON c.institution = b.institution AND c.bdg_id = b.bdg_id "
)
_STUDENT = (
    f"WHERE k.institution = ? AND b.institution = ? AND {_SHOWN} "
    "AND b.stu_id IN (SELECT stu_id FROM careers WHERE institution = ? AND matricola = ?) "
)
# The student's current card: an ACTIVE one if any, else the latest issued.
_CURRENT_FIRST = (
    f"ORDER BY CASE WHEN c.desired_status = '{CardStatus.ACTIVE}' THEN 0 ELSE 1 END, "
    "c.issued_at DESC, c.changed_at DESC, c.escn DESC LIMIT 1"
)
_QR_COLUMNS = "c.escn, c.institution, q.payload, q.png, q.svg"

CARD_BY_ESCN = (
    f"SELECT {_BADGE_COLUMNS} FROM cards c "
    "JOIN careers k ON k.institution = c.institution AND k.stu_id = c.stu_id "
    f"WHERE c.escn = ? AND {_SHOWN}"
)
CARD_BY_MATRICOLA = f"SELECT {_BADGE_COLUMNS} {_STUDENT_CARDS}{_STUDENT}{_CURRENT_FIRST}"
QR_BY_ESCN = (
    f"SELECT {_QR_COLUMNS} FROM cards c LEFT JOIN qr_images q ON q.escn = c.escn "
    f"WHERE c.escn = ? AND {_SHOWN}"
)
QR_BY_MATRICOLA = (
    f"SELECT {_QR_COLUMNS} {_STUDENT_CARDS}"
    f"LEFT JOIN qr_images q ON q.escn = c.escn {_STUDENT}{_CURRENT_FIRST}"
)


CHECKOUT_TIMEOUT = 30.0  # seconds a read waits for a free connection before failing (a 503)


class BadgeRow(NamedTuple):
    escn: str
    institution: str
    academic_year: int
    esi: str
    card_type: str
    issued_at: dt.date
    expires_at: dt.date
    desired_status: str
    matricola: str
    first_name: str
    last_name: str
    course_name: str


class QrRow(NamedTuple):
    escn: str
    institution: str
    payload: str | None  # None: no qr_images row yet
    png: bytes | None
    svg: bytes | None


def _date(value: Any) -> dt.date:
    # SQLite hands back the ISO text SQLAlchemy stored; PostgreSQL a date.
    return dt.date.fromisoformat(value) if isinstance(value, str) else value


class HotReader:
    def __init__(self, engine: Engine, pool_size: int = 4) -> None:
        self.engine = engine
        self.inline = engine.dialect.name == "sqlite"
        self._paramstyle_pg = not self.inline and engine.dialect.paramstyle in ("format", "pyformat")
        self._pool_size = 1 if self.inline else pool_size
        self._idle: queue.LifoQueue[Any] = queue.LifoQueue()
        self._made = 0
        self._all: list[Any] = []
        self._lock = threading.Lock()

    async def ping(self) -> None:
        await self._one("SELECT 1", ())

    async def card_by_escn(self, escn: str) -> BadgeRow | None:
        row = await self._one(CARD_BY_ESCN, (escn,))
        return None if row is None else _badge_row(row)

    async def card_by_matricola(self, university: str, matricola: str) -> BadgeRow | None:
        row = await self._one(CARD_BY_MATRICOLA, (university, university, university, matricola))
        return None if row is None else _badge_row(row)

    async def qr_by_escn(self, escn: str) -> QrRow | None:
        row = await self._one(QR_BY_ESCN, (escn,))
        return None if row is None else QrRow(*row)

    async def qr_by_matricola(self, university: str, matricola: str) -> QrRow | None:
        row = await self._one(QR_BY_MATRICOLA, (university, university, university, matricola))
        return None if row is None else QrRow(*row)

    def close(self) -> None:
        with self._lock:
            for fairy in self._all:
                fairy.close()
            self._all.clear()

    async def _one(self, sql: str, params: tuple[Any, ...]) -> tuple[Any, ...] | None:
        if self._paramstyle_pg:
            sql = sql.replace("?", "%s")
        if self.inline:
            return self._run(sql, params)
        return await run_in_threadpool(self._run, sql, params)

    def _run(self, sql: str, params: tuple[Any, ...]) -> tuple[Any, ...] | None:
        try:
            fairy = self._checkout()
        except self.engine.dialect.loaded_dbapi.Error as exc:  # could not connect
            raise OperationalError(sql, params, exc) from exc
        try:
            cursor = fairy.dbapi_connection.cursor()
            try:
                cursor.execute(sql, params)
                row = cursor.fetchone()
            finally:
                cursor.close()
        except self.engine.dialect.loaded_dbapi.Error as exc:
            self._discard(fairy)
            raise OperationalError(sql, params, exc) from exc
        self._idle.put(fairy)
        return None if row is None else tuple(row)

    def _checkout(self) -> Any:
        deadline = time.monotonic() + CHECKOUT_TIMEOUT
        while True:
            try:
                return self._idle.get_nowait()
            except queue.Empty:
                pass
            with self._lock:
                make = self._made < self._pool_size
                if make:
                    self._made += 1
            if make:
                return self._connect()
            try:  # all busy (threadpool mode only): wait, re-checking in case one was discarded
                return self._idle.get(timeout=0.2)
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise OperationalError("hot read", None, TimeoutError("no free connection")) from None

    def _connect(self) -> Any:
        try:
            fairy = self.engine.raw_connection()
            if not self.inline and fairy.dbapi_connection is not None:
                fairy.dbapi_connection.autocommit = True  # no transaction left open between reads
        except BaseException:
            with self._lock:
                self._made -= 1
            raise
        with self._lock:
            self._all.append(fairy)
        return fairy

    def _discard(self, fairy: Any) -> None:
        with self._lock:
            self._made -= 1
            if fairy in self._all:
                self._all.remove(fairy)
        fairy.invalidate()


def _badge_row(row: tuple[Any, ...]) -> BadgeRow:
    r = BadgeRow(*row)
    return r._replace(issued_at=_date(r.issued_at), expires_at=_date(r.expires_at))
