"""Persons and their ESIs in the state DB: who needs one, the intents recorded before each Router call
and the confirmations after, the ESI written back onto Esse3 careers."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import Boolean, Connection, Date, Integer, bindparam, text, update

from etl.domain.careers import CareerRecord
from etl.domain.person_plan import PersonCandidate, WriteBackCandidate
from etl.domain.states import QuarantineStage, SyncState
from etl.domain.sync_outcomes import PersonOutcome
from etl.store.bulk import Bulk
from etl.store.models import Career, Person, optional_state, utcnow

# Careers usable downstream: finalised, still in Esse3 and not quarantined at the careers stage.
_USABLE = f"""
    c.institution = :i AND c.finalised = :true AND c.vanished_at IS NULL AND c.erased_at IS NULL
    AND NOT EXISTS (
        SELECT 1 FROM quarantine q
        WHERE q.institution = c.institution AND q.stage = '{QuarantineStage.CAREERS}'
          AND q.source_table = 'P01_STU'
          AND q.source_key = CAST(c.stu_id AS VARCHAR(20)) AND q.resolved_at IS NULL)
"""


# For every person with a usable career in the partition: their *current* career across all years
# (latest year, then latest career), so the body sent to the Router never flip-flops between the
# bachelor and the master partition.
PERSON_CANDIDATES = text(f"""
WITH part AS (
    SELECT DISTINCT c.pers_id FROM careers c WHERE {_USABLE} AND c.academic_year = :y
), ranked AS (
    SELECT c.pers_id, c.person_key, c.stu_id, c.first_name, c.last_name, c.email, c.academic_level,
           c.consent, c.course_type,
           ROW_NUMBER() OVER (PARTITION BY c.pers_id ORDER BY c.academic_year DESC, c.stu_id DESC) AS rn
    FROM careers c JOIN part ON part.pers_id = c.pers_id
    WHERE {_USABLE}
)
SELECT r.pers_id, r.person_key, r.stu_id, r.first_name, r.last_name, r.email, r.academic_level,
       r.consent, r.course_type, p.esi,
       CASE WHEN p.erased_at IS NULL THEN p.state END, CASE WHEN p.erased_at IS NULL THEN p.synced_hash END
FROM ranked r LEFT JOIN persons p ON p.institution = :i AND p.pers_id = r.pers_id
WHERE r.rn = 1
  -- erased at the Router (a new enrolment registers them again: no state) or being erased (left alone)
  AND (p.erase_requested_at IS NULL OR p.erased_at IS NOT NULL)
ORDER BY r.pers_id
""")


# The ESI prefix (37 characters) compares case-insensitively: "URN:SCHAC:..." on a career is the same
# ESI, and must not be selected (and rewritten) on every run.
_SAME_ESI = """(LOWER(SUBSTR(c.source_esi, 1, 37)) = LOWER(SUBSTR(p.esi, 1, 37))
     AND SUBSTR(c.source_esi, 38) = SUBSTR(p.esi, 38))"""


WRITE_BACK_CANDIDATES = text(f"""
SELECT c.stu_id, p.esi, c.source_esi, c.esi_written
FROM careers c JOIN persons p ON p.institution = c.institution AND p.pers_id = c.pers_id
WHERE {_USABLE} AND c.academic_year = :y AND p.state = '{SyncState.REGISTERED}'
  AND (c.source_esi IS NULL OR NOT {_SAME_ESI})
ORDER BY c.stu_id
""")


# Every ESI already written on any career of the candidate persons (any year): a person whose careers
# carry an ESI other than the one we would register is refused before any Router call. An ESI esc-sync
# wrote itself is not: the career changed person (a merge), and it gets the new person's.
SOURCE_ESIS = text("""
SELECT DISTINCT c.pers_id, c.source_esi FROM careers c
WHERE c.institution = :i AND c.source_esi IS NOT NULL
  AND (c.esi_written IS NULL OR c.source_esi <> c.esi_written)
  AND c.pers_id IN (SELECT pers_id FROM careers WHERE institution = :i AND academic_year = :y)
""")


def person_candidates(conn: Connection, institution: str, year: int) -> list[PersonCandidate]:
    rows = conn.execute(PERSON_CANDIDATES, {"i": institution, "y": year, "true": True})
    return [PersonCandidate._make((*r[:-2], optional_state(r[-2]), r[-1])) for r in rows]


def source_esis(conn: Connection, institution: str, year: int) -> dict[int, set[str]]:
    out: dict[int, set[str]] = {}
    for pers_id, esi in conn.execute(SOURCE_ESIS, {"i": institution, "y": year}):
        out.setdefault(pers_id, set()).add(esi)
    return out


def write_back_candidates(conn: Connection, institution: str, year: int) -> list[WriteBackCandidate]:
    rows = conn.execute(WRITE_BACK_CANDIDATES, {"i": institution, "y": year, "true": True})
    return [WriteBackCandidate(*r) for r in rows]


def record_person_intents(
    conn: Connection, institution: str, rows: Sequence[tuple[int, str, str, SyncState]]
) -> None:
    """(pers_id, person_key, esi, state) committed *before* the Router is called. A person erased
    before and registered again (a new enrolment) is no longer erased."""
    cols = ("institution", "esi", "pers_id", "person_key", "state", "created_at", "erase_reason")
    Bulk(conn).upsert(
        "persons",
        (*cols, "erase_requested_at", "erased_at"),
        ("institution", "esi"),
        (
            (institution, esi, pers_id, key, state, utcnow(), None, None, None)
            for pers_id, key, esi, state in rows
        ),
        keep=("created_at",),
        temporal=("created_at", "erase_requested_at", "erased_at"),
    )


def confirm_persons(conn: Connection, institution: str, outcomes: Iterable[PersonOutcome]) -> None:
    """Each outcome's state, synced hash (None keeps the old one) and last error."""
    now = utcnow()
    stmt = (
        update(Person)
        .where(Person.institution == bindparam("i"), Person.esi == bindparam("e"))
        .values(
            state=bindparam("state"),
            synced_hash=bindparam("h"),
            last_error=bindparam("err"),
            last_sync_at=now,
        )
    )
    params = [
        {"i": institution, "e": o.esi, "state": o.state, "h": o.synced_hash, "err": o.last_error}
        for o in outcomes
    ]
    if params:
        conn.execute(stmt, params)
        conn.execute(
            update(Person)
            .where(
                Person.institution == institution,
                Person.first_sync_at.is_(None),
                Person.state == SyncState.REGISTERED,
            )
            .values(first_sync_at=now)
        )


def mark_written_back(conn: Connection, institution: str, pairs: Sequence[tuple[int, str]]) -> None:
    """After the ESI was written onto the Esse3 career, mirror it on our copy (and its hash, so the
    next careers sync sees the row as unchanged), and remember that esc-sync wrote it."""
    if not pairs:
        return
    esi_of = dict(pairs)
    rows = conn.execute(
        text(
            "SELECT " + ", ".join(f for f in CareerRecord._fields) + " FROM careers "
            "WHERE institution = :i AND stu_id IN :ids"
        )
        .bindparams(bindparam("ids", expanding=True))
        # Typed like the ORM reads them, or SQLite's text dates would change the row hash.
        .columns(
            enrolment_date=Date,
            closing_date=Date,
            finalised=Boolean,
            academic_year=Integer,
            stu_id=Integer,
            pers_id=Integer,
        ),
        {"i": institution, "ids": list(esi_of)},
    )
    updates = []
    for row in rows:
        record = CareerRecord(*row)._replace(source_esi=esi_of[row.stu_id])
        updates.append({"i": institution, "s": record.stu_id, "e": record.source_esi, "h": record.row_hash()})
    conn.execute(
        update(Career)
        .where(Career.institution == bindparam("i"), Career.stu_id == bindparam("s"))
        .values(source_esi=bindparam("e"), esi_written=bindparam("e"), row_hash=bindparam("h")),
        updates,
    )


def count_persons(conn: Connection, institution: str, year: int) -> int:
    """Registered persons with a career in the partition."""
    return int(
        conn.execute(
            text(
                "SELECT COUNT(DISTINCT p.esi) FROM persons p JOIN careers c "
                "ON c.institution = p.institution AND c.pers_id = p.pers_id "
                f"WHERE p.institution = :i AND c.academic_year = :y AND p.state = '{SyncState.REGISTERED}'"
            ),
            {"i": institution, "y": year},
        ).scalar_one()
    )
