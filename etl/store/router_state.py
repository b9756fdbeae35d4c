"""Queries behind the Router assets: who needs an ESI, which badges need cards, and the intent /
confirmation writes on persons and cards."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from sqlalchemy import Boolean, Connection, Date, Integer, bindparam, text, update

from etl.domain.careers import CareerRecord
from etl.domain.sync_outcomes import CardOutcome, PersonOutcome, SyncState
from etl.store.bulk import Bulk
from etl.store.models import Card, Career, Person, utcnow

# Careers usable downstream: finalised and not quarantined at the careers stage.
_USABLE = """
    c.institution = :i AND c.finalised = :true
    AND NOT EXISTS (
        SELECT 1 FROM quarantine q
        WHERE q.institution = c.institution AND q.stage = 'careers' AND q.source_table = 'P01_STU'
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
       r.consent, r.course_type, p.esi, p.state, p.synced_hash
FROM ranked r LEFT JOIN persons p ON p.institution = :i AND p.pers_id = r.pers_id
WHERE r.rn = 1
ORDER BY r.pers_id
""")

# The ESI prefix (37 characters) compares case-insensitively: "URN:SCHAC:..." on a career is the same
# ESI, and must not be selected (and rewritten) on every run.
_SAME_ESI = """(LOWER(SUBSTR(c.source_esi, 1, 37)) = LOWER(SUBSTR(p.esi, 1, 37))
     AND SUBSTR(c.source_esi, 38) = SUBSTR(p.esi, 38))"""
WRITE_BACK_CANDIDATES = text(f"""
SELECT c.stu_id, p.esi, c.source_esi
FROM careers c JOIN persons p ON p.institution = c.institution AND p.pers_id = c.pers_id
WHERE {_USABLE} AND c.academic_year = :y AND p.state = 'registered'
  AND (c.source_esi IS NULL OR NOT {_SAME_ESI})
ORDER BY c.stu_id
""")

# Every ESI already written on any career of the candidate persons (any year): a person whose careers
# carry an ESI other than the one we would register is refused before any Router call.
SOURCE_ESIS = text("""
SELECT DISTINCT c.pers_id, c.source_esi FROM careers c
WHERE c.institution = :i AND c.source_esi IS NOT NULL
  AND c.pers_id IN (SELECT pers_id FROM careers WHERE institution = :i AND academic_year = :y)
""")

CARD_CANDIDATES = text("""
SELECT b.bdg_id, b.stu_id, b.kind, b.valid_from, b.valid_to, b.annulled,
       c.status, c.consent, p.esi, p.state,
       k.escn, k.state, k.router_status, k.expires_at, k.desired_status
FROM badges b
JOIN careers c ON c.institution = b.institution AND c.stu_id = b.stu_id
JOIN persons p ON p.institution = b.institution AND p.pers_id = c.pers_id
LEFT JOIN cards k ON k.institution = b.institution AND k.bdg_id = b.bdg_id
WHERE b.institution = :i AND b.academic_year = :y
ORDER BY b.bdg_id
""").columns(valid_from=Date, valid_to=Date, expires_at=Date, annulled=Boolean)


class PersonCandidate(NamedTuple):
    """A person with a usable career in the partition (their current career), and what we hold."""

    pers_id: int
    person_key: str
    stu_id: int
    first_name: str
    last_name: str
    email: str | None
    academic_level: str | None
    consent: str | None
    course_type: str
    esi: str | None  # None: never recorded
    state: str | None  # a SyncState
    synced_hash: str | None


class CardCandidate(NamedTuple):
    """A badge of the partition with its career, person and card (if any)."""

    bdg_id: int
    stu_id: int
    kind: str
    valid_from: dt.date
    valid_to: dt.date
    annulled: bool
    career_status: str
    consent: str | None
    esi: str
    person_state: str  # a SyncState
    escn: str | None  # None: no card yet
    card_state: str | None
    router_status: str | None
    synced_expiry: dt.date | None
    desired_status: str | None


def person_candidates(conn: Connection, institution: str, year: int) -> list[PersonCandidate]:
    rows = conn.execute(PERSON_CANDIDATES, {"i": institution, "y": year, "true": True})
    return [PersonCandidate(*r) for r in rows]


def source_esis(conn: Connection, institution: str, year: int) -> dict[int, set[str]]:
    out: dict[int, set[str]] = {}
    for pers_id, esi in conn.execute(SOURCE_ESIS, {"i": institution, "y": year}):
        out.setdefault(pers_id, set()).add(esi)
    return out


def write_back_candidates(conn: Connection, institution: str, year: int) -> list[Any]:
    return list(conn.execute(WRITE_BACK_CANDIDATES, {"i": institution, "y": year, "true": True}))


def card_candidates(conn: Connection, institution: str, year: int) -> list[CardCandidate]:
    return [CardCandidate(*r) for r in conn.execute(CARD_CANDIDATES, {"i": institution, "y": year})]


def record_person_intents(
    conn: Connection, institution: str, rows: Sequence[tuple[int, str, str, SyncState]]
) -> None:
    """(pers_id, person_key, esi, state) committed *before* the Router is called."""
    Bulk(conn).upsert(
        "persons",
        ("institution", "esi", "pers_id", "person_key", "state", "created_at"),
        ("institution", "esi"),
        ((institution, esi, pers_id, key, state, utcnow()) for pers_id, key, esi, state in rows),
        keep=("created_at",),
        temporal=("created_at",),
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
                Person.state == "registered",
            )
            .values(first_sync_at=now)
        )


def mark_written_back(conn: Connection, institution: str, pairs: Sequence[tuple[int, str]]) -> None:
    """After the ESI was written onto the Esse3 career, mirror it on our copy (and its hash, so the
    next careers sync sees the row as unchanged)."""
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
        .values(source_esi=bindparam("e"), row_hash=bindparam("h")),
        updates,
    )


def record_card_intents(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """New cards with their minted ESCN, state 'pending', committed before the Router call."""
    cols = (
        "escn",
        "institution",
        "academic_year",
        "bdg_id",
        "stu_id",
        "esi",
        "card_type",
        "issued_at",
        "expires_at",
        "desired_status",
        "state",
        "changed_at",
        "created_at",
    )
    Bulk(conn).upsert(
        "cards",
        cols,
        ("escn",),
        ([r[c] for c in cols] for r in rows),
        keep=("created_at",),
        temporal=("issued_at", "expires_at", "changed_at", "created_at"),
    )


def confirm_cards(conn: Connection, outcomes: Iterable[CardOutcome]) -> None:
    """Cards the Router confirmed: registered, with the status and expiry it now holds."""
    now = utcnow()
    params = [
        {
            "k": o.escn,
            "state": SyncState.REGISTERED,
            "rs": o.confirmed.status,
            "ds": o.confirmed.status,
            "exp": o.confirmed.expires_at,
            "h": o.synced_hash,
            "err": o.last_error,
        }
        for o in outcomes
        if o.confirmed is not None
    ]
    if not params:
        return
    conn.execute(
        update(Card)
        .where(Card.escn == bindparam("k"))
        .values(
            state=bindparam("state"),
            router_status=bindparam("rs"),
            desired_status=bindparam("ds"),
            expires_at=bindparam("exp"),
            synced_hash=bindparam("h"),
            last_error=bindparam("err"),
            last_sync_at=now,
            changed_at=now,
        ),
        params,
    )
    conn.execute(
        update(Card)
        .where(
            Card.escn.in_([p["k"] for p in params]), Card.first_sync_at.is_(None), Card.state == "registered"
        )
        .values(first_sync_at=now)
    )


_TAKE_CLOCK = text(
    "INSERT INTO escn_clock (pic, next_seq) VALUES (:pic, 1) "
    "ON CONFLICT (pic) DO UPDATE SET next_seq = escn_clock.next_seq + 1 RETURNING next_seq"
)


def take_clock_sequence(conn: Connection, pic: str) -> int:
    """A 14-bit ESCN clock sequence no other minter of ``pic`` holds now: a counter in the state DB,
    taken under its row lock (PostgreSQL) or the write lock (SQLite), shared by every process and
    machine on that DB. 16,384 minters apart would be needed to meet one again, and then only on the
    same millisecond."""
    return (int(conn.execute(_TAKE_CLOCK, {"pic": pic}).scalar_one()) - 1) % (1 << 14)


def count_persons(conn: Connection, institution: str, year: int) -> int:
    """Registered persons with a career in the partition."""
    return int(
        conn.execute(
            text(
                "SELECT COUNT(DISTINCT p.esi) FROM persons p JOIN careers c "
                "ON c.institution = p.institution AND c.pers_id = p.pers_id "
                "WHERE p.institution = :i AND c.academic_year = :y AND p.state = 'registered'"
            ),
            {"i": institution, "y": year},
        ).scalar_one()
    )


def count_cards(conn: Connection, institution: str, year: int) -> dict[str, int]:
    rows = conn.execute(
        text(
            "SELECT state, desired_status, COUNT(*) FROM cards WHERE institution = :i AND academic_year = :y "
            "GROUP BY state, desired_status"
        ),
        {"i": institution, "y": year},
    )
    return {f"{state}_{status.lower()}": n for state, status, n in rows}


def count_badges(conn: Connection, institution: str, year: int) -> int:
    return int(
        conn.execute(
            text("SELECT COUNT(*) FROM badges WHERE institution = :i AND academic_year = :y"),
            {"i": institution, "y": year},
        ).scalar_one()
    )


BADGE_COLUMNS = (
    "institution",
    "bdg_id",
    "stu_id",
    "pers_id",
    "academic_year",
    "valid_from",
    "valid_to",
    "annulled",
    "printed_on",
    "kind",
    "source_data_mod",
    "updated_at",
)


def upsert_badges(conn: Connection, rows: Sequence[tuple[Any, ...]]) -> None:
    """Rows in BADGE_COLUMNS order."""
    Bulk(conn).upsert(
        "badges",
        BADGE_COLUMNS,
        ("institution", "bdg_id"),
        rows,
        temporal=("valid_from", "valid_to", "printed_on", "source_data_mod", "updated_at"),
    )


def forget_card_intents(conn: Connection, escns: Sequence[str]) -> None:
    """Drop recorded numbers that turned out not to be ours to use (never a confirmed card)."""
    if escns:
        conn.execute(
            text("DELETE FROM cards WHERE escn = :escn AND state <> 'registered'"),
            [{"escn": e} for e in escns],
        )


def record_card_errors(conn: Connection, outcomes: Sequence[CardOutcome]) -> None:
    """A failed call leaves the confirmed Router state alone; a permanent refusal of a card never
    registered marks it failed (it stays quarantined until the data changes)."""
    if not outcomes:
        return
    conn.execute(
        text(
            "UPDATE cards SET last_error = :err, last_sync_at = :now, "
            "state = CASE WHEN state = 'pending' AND :permanent THEN 'failed' ELSE state END "
            "WHERE escn = :escn"
        ),
        [
            {"err": o.last_error, "now": utcnow(), "permanent": o.reason is not None, "escn": o.escn}
            for o in outcomes
        ],
    )


def retry_backlog(conn: Connection, institution: str) -> dict[str, int]:
    """Persons and cards whose last Router call failed transiently (retries ran out): the next run
    retries them. Permanent refusals are in the quarantine instead."""
    return {
        table: conn.execute(
            text(  # the table from the fixed tuple below, never from input
                f"SELECT COUNT(*) FROM {table} "
                "WHERE institution = :i AND last_error LIKE 'Router unavailable%'"
            ),
            {"i": institution},
        ).scalar_one()
        for table in ("persons", "cards")
    }


def registered_totals(conn: Connection, institution: str) -> dict[str, int]:
    """What the Router should hold for us: registered persons and registered cards."""
    persons = conn.execute(
        text("SELECT COUNT(*) FROM persons WHERE institution = :i AND state = 'registered'"),
        {"i": institution},
    ).scalar_one()
    cards = conn.execute(
        text("SELECT COUNT(*) FROM cards WHERE institution = :i AND state = 'registered'"), {"i": institution}
    ).scalar_one()
    return {"persons": persons, "cards": cards}
