"""Queries on careers, quarantine and watermarks used by the careers asset and its checks."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence

from sqlalchemy import Connection, case, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from etl.domain.careers import CareerRecord, Rejection
from etl.store.bulk import Bulk
from etl.store.models import Career, Quarantine, Watermark, utcnow

CAREERS_STAGE = "careers"


def _insert(conn: Connection, model: type[Quarantine | Watermark]) -> postgresql.Insert | sqlite.Insert:
    """INSERT … ON CONFLICT for the dialect in use (both supported dialects spell it the same)."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(model)
    return sqlite.insert(model)


def existing_hashes(conn: Connection, institution: str, stu_ids: Sequence[int]) -> dict[int, str]:
    rows = Bulk(conn).select_where_in(
        "SELECT stu_id, row_hash FROM careers WHERE institution = %s AND stu_id {IN}",
        (institution,),
        stu_ids,
        "integer",
    )
    return dict(rows)


def matricola_holders(conn: Connection, institution: str, matricole: Iterable[str]) -> dict[str, int]:
    """matricola → the (lowest) STU_ID that already holds it in the state DB."""
    rows = Bulk(conn).select_where_in(
        "SELECT matricola, MIN(stu_id) FROM careers WHERE institution = %s AND matricola {IN} "
        "GROUP BY matricola",
        (institution,),
        sorted(set(matricole)),
        "varchar",
    )
    return dict(rows)


CAREER_COLUMNS = (
    *CareerRecord._fields,
    "institution",
    "row_hash",
    "source_data_mod",
    "created_at",
    "updated_at",
)


def upsert_careers(
    conn: Connection,
    institution: str,
    records: Sequence[tuple[CareerRecord, str, dt.datetime]],
    *,
    new: bool = False,
) -> None:
    """Insert or update careers; each comes with its row hash and source DATA_MOD (newest of the
    joined rows). ``new``: none of them was found in the state DB (the backfill's fast path)."""
    now = utcnow()
    Bulk(conn).upsert(
        "careers",
        CAREER_COLUMNS,
        ("institution", "stu_id"),
        ((*r, institution, row_hash, data_mod, now, now) for r, row_hash, data_mod in records),
        keep=("created_at",),
        temporal=("enrolment_date", "closing_date", "source_data_mod", "created_at", "updated_at"),
        new=new,
    )


def open_quarantine_keys(conn: Connection, institution: str, academic_year: int, stage: str) -> set[str]:
    rows = conn.execute(
        select(Quarantine.source_key).where(
            Quarantine.institution == institution,
            Quarantine.academic_year == academic_year,
            Quarantine.stage == stage,
            Quarantine.resolved_at.is_(None),
        )
    )
    return {r[0] for r in rows}


def quarantine(
    conn: Connection,
    institution: str,
    academic_year: int | None,
    stage: str,
    source_table: str,
    rejections: Sequence[Rejection],
) -> None:
    if not rejections:
        return
    now = utcnow()
    stmt = _insert(conn, Quarantine)
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["institution", "stage", "source_table", "source_key"],
            set_={
                "reason": stmt.excluded.reason,
                "last_seen": now,
                "resolved_at": None,
                "academic_year": stmt.excluded.academic_year,
            },
        ),
        [
            {
                "institution": institution,
                "academic_year": academic_year,
                "stage": stage,
                "source_table": source_table,
                "source_key": str(r.stu_id),
                "reason": r.reason,
                "first_seen": now,
                "last_seen": now,
            }
            for r in rejections
        ],
    )


def resolve_quarantine(
    conn: Connection, institution: str, stage: str, source_table: str, keys: Iterable[str]
) -> None:
    keys = list(keys)
    if keys:
        conn.execute(
            update(Quarantine)
            .where(
                Quarantine.institution == institution,
                Quarantine.stage == stage,
                Quarantine.source_table == source_table,
                Quarantine.source_key.in_(keys),
                Quarantine.resolved_at.is_(None),
            )
            .values(resolved_at=utcnow())
        )


def get_watermarks(conn: Connection, partition_key: str) -> dict[str, dt.datetime]:
    rows = conn.execute(
        select(Watermark.source_table, Watermark.data_mod).where(Watermark.partition_key == partition_key)
    )
    return {r[0]: r[1] for r in rows}


def all_watermarks(conn: Connection) -> dict[tuple[str, str], dt.datetime]:
    rows = conn.execute(select(Watermark.partition_key, Watermark.source_table, Watermark.data_mod))
    return {(r[0], r[1]): r[2] for r in rows}


def advance_watermarks(conn: Connection, partition_key: str, seen: dict[str, dt.datetime]) -> None:
    """Move each table's watermark forward to the newest DATA_MOD processed; never backwards."""
    current = get_watermarks(conn, partition_key)
    stmt = _insert(conn, Watermark)
    for table, data_mod in seen.items():
        if table in current and current[table] >= data_mod:
            continue
        conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["partition_key", "source_table"],
                set_={"data_mod": stmt.excluded.data_mod, "updated_at": stmt.excluded.updated_at},
            ),
            {
                "partition_key": partition_key,
                "source_table": table,
                "data_mod": data_mod,
                "updated_at": utcnow(),
            },
        )


def duplicate_matricole(conn: Connection, institution: str) -> list[tuple[str, int]]:
    rows = conn.execute(
        select(Career.matricola, func.count())
        .where(Career.institution == institution)
        .group_by(Career.matricola)
        .having(func.count() > 1)
    )
    return [(r[0], r[1]) for r in rows]


def partition_counts(conn: Connection, institution: str, academic_year: int) -> dict[str, int]:
    careers, finalised = conn.execute(
        select(func.count(), func.coalesce(func.sum(case((Career.finalised, 1), else_=0)), 0)).where(
            Career.institution == institution, Career.academic_year == academic_year
        )
    ).one()
    quarantined = conn.execute(
        select(func.count()).where(
            Quarantine.institution == institution,
            Quarantine.academic_year == academic_year,
            Quarantine.resolved_at.is_(None),
        )
    ).scalar_one()
    return {"careers": careers, "finalised": int(finalised), "quarantined": quarantined}


def top_quarantine_reasons(
    conn: Connection, institution: str, academic_year: int, limit: int = 3
) -> list[tuple[str, int]]:
    rows = conn.execute(
        select(Quarantine.reason, func.count().label("n"))
        .where(
            Quarantine.institution == institution,
            Quarantine.academic_year == academic_year,
            Quarantine.resolved_at.is_(None),
        )
        .group_by(Quarantine.reason)
        .order_by(func.count().desc(), Quarantine.reason)
        .limit(limit)
    )
    return [(r[0], r[1]) for r in rows]
