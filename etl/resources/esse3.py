"""Esse3 source: runs the SQL of ``etl/sql/esse3/`` (shipped in the package; a site's own versions of
any of them in ``[esse3] sql_dir`` take their place) against any SQLAlchemy URL (Oracle in production
through ``oracledb``; SQLite or PostgreSQL in the demo and tests). The only code that reads Esse3."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

from sqlalchemy import Date, DateTime, Engine, Executable, LargeBinary, TextClause, bindparam, text
from sqlalchemy.engine import Connection, Row
from sqlalchemy.exc import DBAPIError, OperationalError

from etl.domain.badges import BadgeWriteBack
from etl.domain.careers import CAREER_TABLES
from etl.domain.esi import EsiWriteBack
from etl.domain.esse3_time import EPOCH
from etl.errors import ExitCode, UniversityError
from etl.store.db import check_reachable, database_reason, make_engine, sqlite_file_missing

PACKAGED_SQL = files("etl") / "sql" / "esse3"  # found in a wheel's install as in a checkout


_CAREER_TYPES = {
    "DATA_IMM": Date,
    "DATA_CHIUSURA": Date,
    "STU_DATA_MOD": DateTime,
    "ANAPER_DATA_MOD": DateTime,
    "CDS_DATA_MOD": DateTime,
}


WRITE_BACK_CHUNK = 1000  # badges written in one Esse3 transaction


@cache
def sql(name: str, site_dir: Path | None = None) -> str:
    """The statement ``name``: the site's version in ``site_dir`` if it has one, else esc-sync's."""
    if site_dir is not None and (site := site_dir / f"{name}.sql").is_file():
        return site.read_text(encoding="utf-8")
    return (PACKAGED_SQL / f"{name}.sql").read_text(encoding="utf-8")


# The sweep digests a row without its DATA_MODs: parsing them (text on SQLite) would be wasted.
_SWEEP_UNTYPED = ("STU_DATA_MOD", "ANAPER_DATA_MOD", "CDS_DATA_MOD", "DATA_MOD")


@cache
def _careers_statement(name: str, site_dir: Path | None) -> TextClause:
    """Typed binds and result columns, so every driver (SQLite included) returns real dates (and the
    same values whichever statement read a row: its digest must not depend on it)."""
    types = _CAREER_TYPES if name != "careers_of_year" else _without(_CAREER_TYPES, _SWEEP_UNTYPED)
    stmt = text(sql(name, site_dir)).columns(**types)
    if name == "careers_by_id":
        return stmt.bindparams(bindparam("stu_ids", expanding=True))  # type: ignore[return-value]
    if name == "careers_changed":
        binds = [bindparam(f"since_{t}", type_=DateTime) for t in ("stu", "anaper", "cds")]
        return stmt.bindparams(*binds)  # type: ignore[return-value]
    return stmt  # type: ignore[return-value]


_BADGE_TYPES = {"DATA_INI": Date, "DATA_FIN": Date, "DATA_STAMPA": Date, "DATA_MOD": DateTime}


@cache
def _badges_statement(name: str, site_dir: Path | None) -> TextClause:
    types = _BADGE_TYPES if name != "badges_of_year" else _without(_BADGE_TYPES, _SWEEP_UNTYPED)
    stmt = text(sql(name, site_dir)).columns(**types)
    if name == "badges_by_id":
        return stmt.bindparams(bindparam("bdg_ids", expanding=True))  # type: ignore[return-value]
    if name == "badges_changed":
        return stmt.bindparams(bindparam("since", type_=DateTime))  # type: ignore[return-value]
    return stmt  # type: ignore[return-value]


def _without(types: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in types.items() if k not in names}


@dataclass(frozen=True)
class ChangeMarker:
    academic_year: int
    source_table: str
    max_data_mod: dt.datetime | None  # None: every row of the table is dated after the cutoff
    rows: int | None = None  # P01_STU and P01_BADGE: the partition's rows in Esse3


class Esse3Source:
    """Reads one university's Esse3 database. Streams: memory stays flat whatever the table size."""

    def __init__(
        self, institution: str, url: str, *, batch_size: int = 5_000, sql_dir: Path | None = None
    ) -> None:
        self.institution = institution
        self.batch_size = batch_size
        self.sql_dir = sql_dir  # a site's own statements (``[esse3] sql_dir``)
        if missing := sqlite_file_missing(url):  # connecting would leave an empty file behind
            raise UniversityError(
                f"university {institution}: Esse3 database file {missing} not found (esse3_url)",
                exit_code=ExitCode.DATABASE,
            )
        self.engine: Engine = make_engine(url, what=f"university {institution}: Esse3")

    def check(self) -> None:
        check_reachable(self.engine, what=f"university {self.institution}: Esse3")

    def changed_careers(
        self,
        academic_year: int,
        since: Mapping[str, dt.datetime | None],
        overlap: dt.timedelta = dt.timedelta(0),
    ) -> Iterator[list[Row[Any]]]:
        """Batches of careers of a year changed after ``since[table] - overlap``, ordered by STU_ID
        (rows of one key together: duplicates are quarantined by the caller, never dropped)."""
        params = {
            "aa_id": academic_year,
            **{
                f"since_{t.split('_', 1)[1].lower()}": (since.get(t) or EPOCH) - overlap
                for t in CAREER_TABLES
            },
        }
        yield from self._stream(_careers_statement("careers_changed", self.sql_dir), params)

    def careers_by_id(self, academic_year: int, stu_ids: Sequence[int]) -> Iterator[list[Row[Any]]]:
        stmt = _careers_statement("careers_by_id", self.sql_dir)
        for start in range(0, len(stu_ids), 500):  # Oracle caps IN lists at 1,000
            chunk = list(stu_ids[start : start + 500])
            yield from self._stream(stmt, {"aa_id": academic_year, "stu_ids": chunk})

    def careers_of_year(self, academic_year: int) -> Iterator[list[Row[Any]]]:
        """Every career of the year, whatever its DATA_MOD (the sweep), ordered by STU_ID."""
        yield from self._stream(_careers_statement("careers_of_year", self.sql_dir), {"aa_id": academic_year})

    def changed_badges(
        self, academic_year: int, since: dt.datetime | None, overlap: dt.timedelta = dt.timedelta(0)
    ) -> Iterator[list[Row[Any]]]:
        """Badges of the year's careers changed after ``since - overlap`` (``since`` already widened
        for the repeated hour by the caller)."""
        params = {"aa_id": academic_year, "since": (since or EPOCH) - overlap}
        yield from self._stream(_badges_statement("badges_changed", self.sql_dir), params)

    def badges_by_id(self, academic_year: int, bdg_ids: Sequence[int]) -> Iterator[list[Row[Any]]]:
        stmt = _badges_statement("badges_by_id", self.sql_dir)
        for start in range(0, len(bdg_ids), 500):
            chunk = list(bdg_ids[start : start + 500])
            yield from self._stream(stmt, {"aa_id": academic_year, "bdg_ids": chunk})

    def badges_of_year(self, academic_year: int) -> Iterator[list[Row[Any]]]:
        yield from self._stream(_badges_statement("badges_of_year", self.sql_dir), {"aa_id": academic_year})

    def count_of_year(self, table: str, academic_year: int) -> int:
        """How many rows the year's careers (``P01_STU``) or badges (``P01_BADGE``) have in Esse3."""
        name = {"P01_STU": "career_keys", "P01_BADGE": "badge_keys"}[table]
        try:
            with self.engine.connect() as conn:
                stmt = text(f"SELECT COUNT(*) FROM ({sql(name, self.sql_dir)}) k")
                return int(conn.execute(stmt, {"aa_id": academic_year}).scalar_one())
        except DBAPIError as e:
            raise describe_source_error(self.institution, e) from None

    def keys_of_year(self, table: str, academic_year: int) -> list[Any]:
        """The raw keys of the year's careers (``P01_STU``) or badges (``P01_BADGE``), duplicates and
        keys that are not integers included: their number is what the change markers count."""
        name = {"P01_STU": "career_keys", "P01_BADGE": "badge_keys"}[table]
        try:
            with self.engine.connect() as conn:
                return list(conn.execute(text(sql(name, self.sql_dir)), {"aa_id": academic_year}).scalars())
        except DBAPIError as e:
            raise describe_source_error(self.institution, e) from None

    def years_of(self, table: str, keys: Sequence[int]) -> dict[int, int | None]:
        """Where rows gone from their partition are now: key → academic year (None: a badge whose
        career is gone). A key absent from the answer is gone from Esse3."""
        name, bind = {"P01_STU": ("career_years", "stu_ids"), "P01_BADGE": ("badge_years", "bdg_ids")}[table]
        stmt = text(sql(name, self.sql_dir)).bindparams(bindparam(bind, expanding=True))
        found: dict[int, int | None] = {}
        try:
            with self.engine.connect() as conn:
                for start in range(0, len(keys), 500):
                    for key, year in conn.execute(stmt, {bind: list(keys[start : start + 500])}):
                        found[int(key)] = None if year is None else int(year)
        except DBAPIError as e:
            raise describe_source_error(self.institution, e) from None
        return found

    def write_back_esi(self, writes: Sequence[EsiWriteBack]) -> int:
        """Write ESIs onto careers; returns how many careers now carry them. A career carrying an ESI
        esc-sync did not write (``previous``) is left alone."""
        if not writes:
            return 0
        try:
            with self.engine.begin() as conn:
                result = conn.execute(
                    text(sql("write_back_esi", self.sql_dir)),
                    [{"stu_id": w.stu_id, "esi": w.esi, "previous": w.previous} for w in writes],
                )
                return result.rowcount
        except DBAPIError as e:
            raise describe_source_error(self.institution, e) from None

    def write_back_badges(self, rows: Sequence[BadgeWriteBack], *, with_png: bool) -> dict[int, str | None]:
        """Write each card onto its badge, 1,000 badges a transaction (short row locks on a live
        Esse3); return the ESCN every badge of ``rows`` carries afterwards (absent: gone from Esse3)."""
        carried: dict[int, str | None] = {}
        try:
            for start in range(0, len(rows), WRITE_BACK_CHUNK):
                chunk = rows[start : start + WRITE_BACK_CHUNK]
                with self.engine.begin() as conn:
                    conn.execute(
                        text(sql("write_back_badge", self.sql_dir)),
                        [
                            {"bdg_id": w.bdg_id, "escn": w.escn, "qr_url": w.qr_url, "status": w.status,
                             "previous_escn": w.previous_escn, "pending_escn": w.pending_escn}
                            for w in chunk
                        ],
                    )  # fmt: skip
                    if with_png:
                        conn.execute(
                            text(sql("write_back_badge_png", self.sql_dir)).bindparams(
                                bindparam("png", type_=LargeBinary)
                            ),
                            [{"bdg_id": w.bdg_id, "escn": w.escn, "png": w.png} for w in chunk],
                        )
                    written = _badge_cards(conn, [w.bdg_id for w in chunk], self.sql_dir)
                carried.update((bdg_id, escn) for bdg_id, (escn, _status) in written.items())
        except DBAPIError as e:
            raise describe_source_error(self.institution, e) from None
        return carried

    def clear_write_backs(
        self, esis: Sequence[tuple[int, str]], badges: Sequence[tuple[int, str]], *, with_png: bool
    ) -> tuple[int, int]:
        """Erasure: take back the ESIs (stu_id, esi) and the cards (bdg_id, escn) esc-sync wrote, where
        Esse3 still holds exactly those; returns how many careers and badges were cleared."""
        try:
            with self.engine.begin() as conn:
                careers = badges_cleared = 0
                if esis:
                    stmt = text(sql("clear_esi", self.sql_dir))
                    careers = conn.execute(stmt, [{"stu_id": s, "esi": e} for s, e in esis]).rowcount
                if badges:
                    params = [{"bdg_id": b, "escn": e} for b, e in badges]
                    if with_png:
                        conn.execute(text(sql("clear_badge_png", self.sql_dir)), params)
                    badges_cleared = conn.execute(text(sql("clear_badge", self.sql_dir)), params).rowcount
                return careers, badges_cleared
        except DBAPIError as e:
            raise describe_source_error(self.institution, e) from None

    def badge_cards(self, bdg_ids: Sequence[int]) -> dict[int, tuple[str | None, str | None]]:
        """(ESCN, Router status) each badge carries in Esse3."""
        try:
            with self.engine.connect() as conn:
                return _badge_cards(conn, bdg_ids, self.sql_dir)
        except DBAPIError as e:
            raise describe_source_error(self.institution, e) from None

    def badges_carrying_cards(self) -> Iterator[tuple[int, str, bool]]:
        """(BDG_ID, the ESCN it carries, whether it carries the QR image) of every badge with an ESCN."""
        try:
            with self.engine.connect() as conn:
                result = conn.execution_options(stream_results=True, yield_per=10_000)
                for bdg_id, escn, png in result.execute(text(sql("badges_carrying_cards", self.sql_dir))):
                    yield int(bdg_id), str(escn), bool(png)
        except DBAPIError as e:
            raise describe_source_error(self.institution, e) from None

    def change_markers(self, cutoff: dt.datetime = dt.datetime.max) -> list[ChangeMarker]:
        """Newest DATA_MOD per academic year and table, ignoring rows dated after ``cutoff``, and the
        careers' and badges' row counts."""
        stmt = text(sql("change_markers", self.sql_dir)).bindparams(bindparam("cutoff", type_=DateTime))
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(stmt, {"cutoff": cutoff}).all()
        except DBAPIError as e:
            raise describe_source_error(self.institution, e) from None
        return [
            ChangeMarker(
                int(r[0]),
                str(r[1]),
                None if r[2] is None else _as_datetime(r[2]),
                None if r[3] is None else int(r[3]),
            )
            for r in rows
            if r[0] is not None and (r[2] is not None or r[3] is not None)
        ]

    def _stream(self, stmt: Executable, params: dict[str, object]) -> Iterator[list[Row[Any]]]:
        """Batches of rows ordered by key. Rows sharing a key (a broken view, a duplicated badge)
        are never split across batches, so the caller sees every duplicate together and
        quarantines it: none is dropped silently."""
        held: list[Row[Any]] = []
        try:
            with self.engine.connect() as conn:
                result = conn.execution_options(stream_results=True, yield_per=self.batch_size).execute(
                    stmt, params
                )
                for batch in result.partitions():
                    rows = held + list(batch)
                    cut = len(rows)
                    while cut > 0 and rows[cut - 1][0] == rows[-1][0]:
                        cut -= 1
                    if cut == 0:  # one key so far: keep reading
                        held = rows
                        continue
                    held = rows[cut:]
                    yield rows[:cut]
                if held:
                    yield held
        except DBAPIError as e:
            raise describe_source_error(self.institution, e) from None

    def dispose(self) -> None:
        self.engine.dispose()


def _as_datetime(v: object) -> dt.datetime:
    # SQLite returns text for aggregates over DATETIME columns.
    if isinstance(v, dt.datetime):
        return v
    if isinstance(v, dt.date):
        return dt.datetime(v.year, v.month, v.day)
    return dt.datetime.fromisoformat(str(v))


def describe_source_error(institution: str, e: DBAPIError) -> UniversityError:
    """One line for a missing table/column or a lost connection, without the SQL or parameters."""
    first = database_reason(e)
    low = first.lower()
    if any(s in low for s in ("no such table", "no such column", "does not exist", "ora-00942", "ora-00904")):
        kind = "missing table or column"
    elif isinstance(e, OperationalError):
        kind = "unreachable or failed"
    else:
        kind = "query failed"
    return UniversityError(
        f"university {institution}: Esse3 {kind}: {first}",
        exit_code=ExitCode.DATABASE,
        transient=isinstance(e, OperationalError) and kind != "missing table or column",
    )


def _badge_cards(
    conn: Connection, bdg_ids: Sequence[int], site_dir: Path | None
) -> dict[int, tuple[str | None, str | None]]:
    stmt = text(sql("badge_cards", site_dir)).bindparams(bindparam("bdg_ids", expanding=True))
    out: dict[int, tuple[str | None, str | None]] = {}
    for start in range(0, len(bdg_ids), 500):  # Oracle caps IN lists at 1,000
        for bdg_id, escn, status in conn.execute(stmt, {"bdg_ids": list(bdg_ids[start : start + 500])}):
            out[int(bdg_id)] = (escn, status)
    return out
