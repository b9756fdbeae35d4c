"""Bulk statements on the hot path, sent straight to the DBAPI driver.

SQLAlchemy Core builds a parameter dict per row and expands IN lists bind by bind; at 100,000 rows
that costs more than the database work. Here rows are plain tuples and psycopg's executemany
pipelines them. The SQL is the same on both dialects but for the placeholder and the key list."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import psycopg
from sqlalchemy import Connection, Engine, Table, text
from sqlalchemy.dialects import postgresql, sqlite


def _sqlite_value(v: Any) -> Any:
    # The same text SQLAlchemy's SQLite types write, so ORM reads and comparisons agree.
    if isinstance(v, dt.datetime):
        return v.strftime("%Y-%m-%d %H:%M:%S.%f")
    if isinstance(v, dt.date):
        return v.isoformat()
    return v


class Bulk:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.sqlite = conn.dialect.name == "sqlite"

    def _rows(self, rows: Iterable[Sequence[Any]], temporal: Sequence[int]) -> list[tuple[Any, ...]]:
        """Rows for the driver; on SQLite the date/time columns at positions ``temporal`` become text."""
        if not self.sqlite or not temporal:
            return [tuple(r) for r in rows]
        out = []
        for row in rows:
            r = list(row)
            for i in temporal:
                r[i] = _sqlite_value(r[i])
            out.append(tuple(r))
        return out

    def select_where_in(
        self, sql: str, params: Sequence[Any], keys: Sequence[Any], pg_type: str
    ) -> list[tuple[Any, ...]]:
        """Run ``sql`` whose last condition is ``<column> {IN}`` with the keys as ONE parameter:
        a JSON array on SQLite (a placeholder per key made every batch size a new prepared
        statement, and sqlite3 caches 128 of them: +5 MB of RSS per partition), an array cast to
        ``pg_type`` on PostgreSQL (the column's type: psycopg would send small ints as smallint[],
        which turns the index lookup into a scan)."""
        if not keys:
            return []
        if self.sqlite:
            stmt = sql.replace("{IN}", "IN (SELECT value FROM json_each(?))").replace("%s", "?")
            args: tuple[Any, ...] = (*params, json.dumps(list(keys)))
        else:
            stmt = sql.replace("{IN}", f"= ANY(%s::{pg_type}[])")
            args = (*params, list(keys))
        return [tuple(r) for r in self.conn.exec_driver_sql(stmt, args)]

    def upsert(
        self,
        table: str,
        columns: Sequence[str],
        key: Sequence[str],
        rows: Iterable[Sequence[Any]],
        *,
        keep: Sequence[str] = (),
        temporal: Sequence[str] = (),
        new: bool = False,
        guarded: Mapping[str, str] | None = None,
    ) -> None:
        """INSERT … ON CONFLICT (key) DO UPDATE every column but the key and ``keep``; a column in
        ``guarded`` only where its SQL condition holds (else it keeps its value); ``guarded`` may name
        columns outside ``columns`` as ``{"col": "expression"}`` under the key ``"set:col"``.
        ``temporal`` names the date/datetime columns (SQLite stores them as text). ``new``: the
        caller found none of the keys in the table (a backfill), so PostgreSQL COPYs straight into
        it, and merges only if a concurrent run inserted one of them meanwhile."""
        rows = self._rows(rows, [columns.index(c) for c in temporal])
        if not rows:
            return
        cols = ", ".join(columns)
        guarded = guarded or {}

        def assign(c: str) -> str:
            if c in guarded:
                return f"{c} = CASE WHEN {guarded[c]} THEN excluded.{c} ELSE {table}.{c} END"
            return f"{c} = excluded.{c}"

        extra = [f"{k.removeprefix('set:')} = {v}" for k, v in guarded.items() if k.startswith("set:")]
        conflict = f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET " + ", ".join(
            [assign(c) for c in columns if c not in key and c not in keep] + extra
        )
        if self.sqlite:
            self.conn.exec_driver_sql(
                f"INSERT INTO {table} ({cols}) VALUES ({', '.join('?' * len(columns))}) {conflict}", rows
            )
            return
        if new:
            try:
                # A savepoint, so a duplicate key undoes just this COPY. A subtransaction per batch:
                # PostgreSQL caches 64 per transaction before other sessions' visibility checks
                # slow down, i.e. 320,000 new careers in one partition.
                with self.conn.begin_nested():
                    self._copy(table, columns, rows)
                return
            except psycopg.errors.UniqueViolation:
                pass
        # COPY into a session-local staging table, then one set-based merge. Several times faster
        # than even pipelined INSERTs; same transaction as everything else.
        stage = f"_stage_{table}"
        self.conn.exec_driver_sql(
            f"CREATE TEMP TABLE IF NOT EXISTS {stage} (LIKE {table}) ON COMMIT DELETE ROWS"
        )
        self._copy(stage, columns, rows, types_of=table)
        self.conn.exec_driver_sql(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {stage} {conflict}")
        self.conn.exec_driver_sql(f"TRUNCATE {stage}")

    def _copy(
        self, table: str, columns: Sequence[str], rows: Sequence[tuple[Any, ...]], types_of: str | None = None
    ) -> None:
        """Binary COPY (≈3× cheaper than text here) of ``rows`` into ``table``, whose column types are
        those of ``types_of`` (a staging table's are its model's)."""
        raw: Any = self.conn.connection.dbapi_connection  # psycopg's: COPY is not in the DB-API
        with raw.cursor() as cur:
            types = self._column_types(cur, types_of or table, tuple(columns))
            with cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(types)
                for r in rows:
                    copy.write_row(r)

    def _column_types(self, cur: Any, table: str, columns: tuple[str, ...]) -> list[str]:
        """The column types binary COPY needs, in column order. Kept with the pooled connection: a
        catalog query per batch cost 5 ms."""
        cache = self.conn.connection.info.setdefault("copy_types", {})
        if (table, columns) not in cache:
            cur.execute(_COLUMN_TYPES, (list(columns), table))
            cache[table, columns] = [r[0] for r in cur.fetchall()]
        types: list[str] = cache[table, columns]
        return types


_COLUMN_TYPES = """
SELECT format_type(a.atttypid, NULL) FROM pg_attribute a
JOIN unnest(%s::text[]) WITH ORDINALITY AS u(name, pos) ON a.attname = u.name
WHERE a.attrelid = %s::regclass ORDER BY u.pos
"""


# Columns whose statistics the planner uses for careers (join keys and filters). Gathering them for
# the wide text columns too (names, course titles, e-mails) made ANALYZE 5× slower: 0.36 s instead
# of 0.07 s at 100,000 careers, paid once per partition during a backfill.
PLANNER_COLUMNS = {
    # erased_at and vanished_at too: without them the planner takes IS NULL to keep 0.5 % of the rows
    # and joins badges to persons by a quadratic nested loop (1.35 s for a 2,000-card partition).
    "careers": (
        "institution",
        "stu_id",
        "pers_id",
        "academic_year",
        "matricola",
        "finalised",
        "source_esi",
        "erased_at",
        "vanished_at",
        "esi_written",
    ),
    # Sampling the images would de-TOAST megabytes; these columns sample 3,000 rows (migration 0012).
    "qr_images": ("escn", "institution", "academic_year"),
}
# Rows a step writes after which it refreshes the planner's statistics. A partition's rows carry values
# (its university, its year) the statistics have not seen: the planner estimates a handful of rows and
# joins them by nested loops quadratic in their number. Partitions of ~300 careers, under the 500 this
# was, made the crash test's reruns on PostgreSQL take 94 s instead of 27; an ANALYZE costs 10-70 ms.
ANALYZE_AFTER_ROWS = 100
# esc-sync's ANALYZE samples 300 × this many rows: 9,000, not the server's default 30,000 (a sample of
# the columns left at their default target; qr_images' are lower, migration 0012). A backfill pays one
# for nearly every partition; at 400,000 careers the careers, persons, badges and cards tables took
# 97, 87, 70 and 130 ms of PostgreSQL's CPU, a third of that with this sample
# (bench/bench_statistics.py). Among 1.9 million careers it plans a new university's partition no worse
# than the server's sample does (docs/performance.md).
STATISTICS_TARGET = 30
_STALE = text(
    "SELECT relname FROM pg_stat_user_tables WHERE schemaname = current_schema()"
    " AND relname = ANY(:tables) AND (COALESCE(last_analyze, last_autoanalyze) IS NULL"
    " OR n_mod_since_analyze > 0.1 * GREATEST(n_live_tup, 1000)) ORDER BY relname"
)


def refresh_statistics(
    db: Connection | Engine, *tables: str, written: int | None = None, only_stale: bool = False
) -> list[str]:
    """After a bulk load PostgreSQL's planner still believes the tables are empty and picks nested
    loops that grow quadratically (10 s instead of 20 ms for a 2,000-student partition). ANALYZE is
    cheap and transactional; SQLite needs nothing. ``written``: the rows a step just wrote; at most
    ``ANALYZE_AFTER_ROWS`` of them leave the statistics as they are. ``only_stale``: only tables
    never analysed or more than 10 % changed since (autovacuum has not caught up). Returns the
    tables analysed. Given the engine, it opens a transaction only when there is something to refresh
    (a checkout pings the database)."""
    if db.dialect.name != "postgresql" or (written is not None and written <= ANALYZE_AFTER_ROWS):
        return []
    if isinstance(db, Engine):
        with db.begin() as conn:
            return refresh_statistics(conn, *tables, only_stale=only_stale)
    conn = db
    names = list(conn.execute(_STALE, {"tables": list(tables)}).scalars()) if only_stale else list(tables)
    if names:
        targets = (f"{t} ({', '.join(PLANNER_COLUMNS[t])})" if t in PLANNER_COLUMNS else t for t in names)
        conn.exec_driver_sql(f"SET LOCAL default_statistics_target = {STATISTICS_TARGET}")
        conn.exec_driver_sql(f"ANALYZE {', '.join(targets)}")
    return names


def upsert_statement(conn: Connection, model: type[Any] | Table) -> postgresql.Insert | sqlite.Insert:
    """INSERT … ON CONFLICT for the dialect in use (both supported dialects spell it the same)."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(model)
    return sqlite.insert(model)
