"""Queries on careers, quarantine and watermarks used by the careers asset and its checks."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

from sqlalchemy import Connection, case, func, select, text

from etl.domain.career_batch import ReadCareer
from etl.domain.careers import SHOWN_FIELDS, CareerRecord
from etl.store.bulk import Bulk
from etl.store.models import Career, Quarantine, utcnow


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
        guarded=ERASED_STAYS_ERASED,
    )


# An erased career (etl.erasure) keeps its names, e-mail and matricola off whatever Esse3 sends again,
# unless the student consents again (opt-in universities): then it is a career like any other.
_CONSENTS_AGAIN = (
    "UPPER(COALESCE(excluded.consent, '')) = 'S' AND UPPER(COALESCE(careers.consent, '')) <> 'S'"
)
ERASED_STAYS_ERASED = {
    **{
        c: f"careers.erased_at IS NULL OR ({_CONSENTS_AGAIN})"
        for c in ("first_name", "last_name", "email", "matricola")
    },
    "set:erased_at": f"CASE WHEN {_CONSENTS_AGAIN} THEN NULL ELSE careers.erased_at END",
}


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
