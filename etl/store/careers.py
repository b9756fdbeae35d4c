"""Queries on careers, quarantine and watermarks used by the careers asset and its checks."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from sqlalchemy import Connection, case, func, select, text, update
from sqlalchemy.dialects import postgresql, sqlite

from etl.domain.careers import SHOWN_FIELDS, CareerRecord, Rejection
from etl.store.bulk import Bulk
from etl.store.models import Career, Quarantine, Watermark, utcnow

CAREERS_STAGE = "careers"
EPOCH = dt.datetime(1900, 1, 1)  # the watermark of a table never read (Esse3 dates are all later)


def _insert(conn: Connection, model: type[Quarantine | Watermark]) -> postgresql.Insert | sqlite.Insert:
    """INSERT … ON CONFLICT for the dialect in use (both supported dialects spell it the same)."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(model)
    return sqlite.insert(model)


class StoredCareer(NamedTuple):
    """What the state DB holds of a career the source just returned: enough to tell an update, a
    digest-only refresh, a year move and a change a vendor sees apart."""

    row_hash: str
    source_digest: str | None
    academic_year: int
    vanished: bool
    shown: tuple[object, ...]  # domain.careers.shown_fields of the stored record


def existing_careers(conn: Connection, institution: str, stu_ids: Sequence[int]) -> dict[int, StoredCareer]:
    rows = Bulk(conn).select_where_in(
        "SELECT stu_id, row_hash, source_digest, academic_year, vanished_at, "
        + ", ".join(SHOWN_FIELDS)
        + " FROM careers WHERE institution = %s AND stu_id {IN}",
        (institution,),
        stu_ids,
        "integer",
    )
    return {r[0]: StoredCareer(r[1], r[2], r[3], r[4] is not None, tuple(r[5:])) for r in rows}


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
    "source_digest",
    "vanished_at",  # always cleared: the row is in Esse3
    "created_at",
    "updated_at",
)


class ReadCareer(NamedTuple):
    """A validated career as read, with what the state DB keeps beside it."""

    record: CareerRecord
    row_hash: str
    data_mod: dt.datetime  # the newest DATA_MOD of its joined rows
    digest: str  # domain.source_drift.career_digest of the source row


def upsert_careers(
    conn: Connection, institution: str, careers: Sequence[ReadCareer], *, new: bool = False
) -> None:
    """Insert or update careers. ``new``: none of them was found in the state DB (the backfill's fast
    path). ``esi_written`` is never touched here: it records what esc-sync wrote."""
    now = utcnow()
    Bulk(conn).upsert(
        "careers",
        CAREER_COLUMNS,
        ("institution", "stu_id"),
        ((*c.record, institution, c.row_hash, c.data_mod, c.digest, None, now, now) for c in careers),
        keep=("created_at",),
        temporal=(
            "enrolment_date",
            "closing_date",
            "source_data_mod",
            "vanished_at",
            "created_at",
            "updated_at",
        ),
        new=new,
    )


def refresh_digests(
    conn: Connection, table: str, institution: str, digests: Sequence[tuple[int, str]]
) -> None:
    """Rows whose source digest moved while what esc-sync keeps of them did not (a touched row, an
    ESI written back): only the digest, so nothing downstream sees a change."""
    key = {"careers": "stu_id", "badges": "bdg_id"}[table]
    if digests:
        conn.execute(
            text(f"UPDATE {table} SET source_digest = :d WHERE institution = :i AND {key} = :k"),
            [{"d": d, "i": institution, "k": k} for k, d in digests],
        )


def partition_keys(conn: Connection, table: str, institution: str, academic_year: int) -> set[int]:
    """Keys of the careers or badges the state DB holds in a partition (vanished ones excluded)."""
    key = {"careers": "stu_id", "badges": "bdg_id"}[table]
    rows = conn.execute(
        text(
            f"SELECT {key} FROM {table} WHERE institution = :i AND academic_year = :y AND vanished_at IS NULL"
        ),
        {"i": institution, "y": academic_year},
    )
    return set(rows.scalars())


def mark_vanished(conn: Connection, table: str, institution: str, keys: Sequence[int]) -> None:
    """Rows deleted from Esse3: kept (their cards must be deactivated, and history holds), flagged."""
    key = {"careers": "stu_id", "badges": "bdg_id"}[table]
    if keys:
        conn.execute(
            text(
                f"UPDATE {table} SET vanished_at = :now, updated_at = :now "
                f"WHERE institution = :i AND {key} = :k"
            ),
            [{"now": utcnow(), "i": institution, "k": k} for k in keys],
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


def get_row_counts(conn: Connection, partition_key: str) -> dict[str, int | None]:
    rows = conn.execute(
        select(Watermark.source_table, Watermark.row_count).where(Watermark.partition_key == partition_key)
    )
    return {r[0]: r[1] for r in rows}


def all_row_counts(conn: Connection) -> dict[tuple[str, str], int | None]:
    rows = conn.execute(select(Watermark.partition_key, Watermark.source_table, Watermark.row_count))
    return {(r[0], r[1]): r[2] for r in rows}


def set_row_count(conn: Connection, partition_key: str, source_table: str, rows: int) -> None:
    """Esse3's row count of the partition when its keys were compared with ours (a partition never
    read yet gets a watermark at the epoch)."""
    stmt = _insert(conn, Watermark)
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["partition_key", "source_table"],
            set_={"row_count": stmt.excluded.row_count, "updated_at": stmt.excluded.updated_at},
        ),
        {
            "partition_key": partition_key,
            "source_table": source_table,
            "data_mod": EPOCH,
            "row_count": rows,
            "updated_at": utcnow(),
        },
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
