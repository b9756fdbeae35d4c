"""The quarantine: source rows (and Router effects) that could not be processed, each with its precise
reason, one row per (university, stage, source table, key); resolved when a later run processes the
fixed row. Queries of every asset that quarantines."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import Connection, func, select, update

from etl.domain.careers import Rejection
from etl.domain.states import QuarantineStage
from etl.store.bulk import upsert_statement
from etl.store.models import Quarantine, utcnow


def open_keys(conn: Connection, institution: str, academic_year: int, stage: QuarantineStage) -> set[str]:
    rows = conn.execute(
        select(Quarantine.source_key).where(
            Quarantine.institution == institution,
            Quarantine.academic_year == academic_year,
            Quarantine.stage == stage,
            Quarantine.resolved_at.is_(None),
        )
    )
    return {r[0] for r in rows}


def record(
    conn: Connection,
    institution: str,
    academic_year: int | None,
    stage: QuarantineStage,
    source_table: str,
    rejections: Sequence[Rejection],
) -> None:
    if not rejections:
        return
    now = utcnow()
    stmt = upsert_statement(conn, Quarantine)
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


def resolve(
    conn: Connection, institution: str, stage: QuarantineStage, source_table: str, keys: Iterable[str]
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


def top_reasons(
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
