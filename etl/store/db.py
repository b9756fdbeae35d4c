"""Engines for the state DB (and Esse3): one place for dialect settings and clear connection errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError

from etl.errors import EscSyncError, ExitCode


def sqlite_file_missing(url: str) -> str | None:
    """The path of a SQLite database file that does not exist (connecting would create it empty), or
    None (it exists, the database is in memory, or it is not SQLite)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    path = parsed.database
    if parsed.get_backend_name() != "sqlite" or not path or path == ":memory:" or path.startswith("file:"):
        return None
    return None if Path(path).exists() else path


def make_engine(url: str, *, what: str = "state DB") -> Engine:
    """Create an engine; SQLite gets WAL and a busy timeout so Dagster's processes can share it."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise EscSyncError(f"{what}: {_safe(url)} is not a valid database URL") from None
    if parsed.drivername == "postgresql":
        # Our deployments use psycopg 3; a bare postgresql:// would need psycopg2.
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(parsed, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(parsed, pool_pre_ping=True, pool_size=5, max_overflow=5)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    # Deleted and overwritten content is zeroed in the file, not left in free space: an erased
    # student's name must not survive in the state DB's bytes (etl.erasure checkpoints the WAL too).
    cur.execute("PRAGMA secure_delete=ON")
    cur.close()


def check_reachable(engine: Engine, *, what: str = "state DB") -> None:
    """Fail with one line (no traceback, no password) when the database cannot be reached."""
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except OperationalError as e:
        reason = database_reason(e)
        raise EscSyncError(
            f"{what}: cannot connect to {_safe(engine.url)}: {reason}", exit_code=ExitCode.DATABASE
        ) from None


def database_reason(error: DBAPIError) -> str:
    """The driver's first line, without the SQL or its parameters (they may hold personal data)."""
    lines = str(error.orig).strip().splitlines() if error.orig is not None else []
    return lines[0] if lines else type(error).__name__


def _safe(url: object) -> str:
    """The URL without its password, for messages."""
    try:
        return make_url(str(url)).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable URL>"
