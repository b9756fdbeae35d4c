"""Queries behind the Router assets: who needs an ESI, which badges need cards, and the intent /
confirmation writes on persons and cards."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from sqlalchemy import Boolean, Connection, Date, DateTime, Integer, bindparam, text, update

from etl.domain.careers import CareerRecord
from etl.domain.sync_outcomes import CardOutcome, PersonOutcome, SyncState
from etl.store.bulk import Bulk
from etl.store.models import Card, Career, Person, utcnow

# Careers usable downstream: finalised, still in Esse3 and not quarantined at the careers stage.
_USABLE = """
    c.institution = :i AND c.finalised = :true AND c.vanished_at IS NULL
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
SELECT c.stu_id, p.esi, c.source_esi, c.esi_written
FROM careers c JOIN persons p ON p.institution = c.institution AND p.pers_id = c.pers_id
WHERE {_USABLE} AND c.academic_year = :y AND p.state = 'registered'
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

# Each badge of the partition with its career, the career's person (none yet: NULLs) and its current card.
CARD_CANDIDATES = text("""
SELECT b.bdg_id, b.stu_id, b.kind, b.valid_from, b.valid_to, b.annulled,
       c.status, c.consent, p.esi, p.state,
       k.escn, k.state, k.router_status, k.expires_at, k.desired_status, k.esi,
       CASE WHEN b.vanished_at IS NULL AND c.vanished_at IS NULL THEN 1 ELSE 0 END
FROM badges b
JOIN careers c ON c.institution = b.institution AND c.stu_id = b.stu_id
LEFT JOIN persons p ON p.institution = b.institution AND p.pers_id = c.pers_id
LEFT JOIN cards k ON k.institution = b.institution AND k.bdg_id = b.bdg_id AND k.retired_at IS NULL
WHERE b.institution = :i AND b.academic_year = :y
ORDER BY b.bdg_id
""").columns(valid_from=Date, valid_to=Date, expires_at=Date, annulled=Boolean)

# Retired cards (their badge's career changed person) the Router may still hold as valid.
RETIRED_CARDS = text("""
SELECT escn, bdg_id, stu_id, esi, card_type, issued_at, expires_at, state, router_status
FROM cards
WHERE institution = :i AND academic_year = :y AND retired_at IS NOT NULL AND state <> 'failed'
  AND NOT (state = 'registered' AND router_status = 'INACTIVE')
ORDER BY escn
""").columns(issued_at=Date, expires_at=Date)


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
    """A badge of the partition with its career, person and current card (if any)."""

    bdg_id: int
    stu_id: int
    kind: str
    valid_from: dt.date
    valid_to: dt.date
    annulled: bool
    career_status: str
    consent: str | None
    esi: str | None  # the career's person's; None: the person has no ESI (yet)
    person_state: str | None  # a SyncState
    escn: str | None  # None: no card yet
    card_state: str | None
    router_status: str | None
    synced_expiry: dt.date | None
    desired_status: str | None
    card_esi: str | None  # the person the card was registered for
    in_source: bool  # badge and career still in Esse3


class RetiredCard(NamedTuple):
    """A card whose badge's career changed person: INACTIVE for good under its own ESI."""

    escn: str
    bdg_id: int
    stu_id: int
    esi: str
    card_type: str
    issued_at: dt.date
    expires_at: dt.date
    state: str  # a SyncState
    router_status: str | None


def person_candidates(conn: Connection, institution: str, year: int) -> list[PersonCandidate]:
    rows = conn.execute(PERSON_CANDIDATES, {"i": institution, "y": year, "true": True})
    return [PersonCandidate(*r) for r in rows]


def source_esis(conn: Connection, institution: str, year: int) -> dict[int, set[str]]:
    out: dict[int, set[str]] = {}
    for pers_id, esi in conn.execute(SOURCE_ESIS, {"i": institution, "y": year}):
        out.setdefault(pers_id, set()).add(esi)
    return out


class WriteBackCandidate(NamedTuple):
    """A usable career of a registered person whose Esse3 career does not carry that person's ESI."""

    stu_id: int
    esi: str  # the person's
    source_esi: str | None  # what CODICE_ESI holds now
    esi_written: str | None  # what esc-sync wrote there before

    @property
    def ours_to_write(self) -> bool:
        """Empty, or holding the ESI esc-sync wrote (the career changed person since)."""
        return self.source_esi is None or self.source_esi == self.esi_written


def write_back_candidates(conn: Connection, institution: str, year: int) -> list[WriteBackCandidate]:
    rows = conn.execute(WRITE_BACK_CANDIDATES, {"i": institution, "y": year, "true": True})
    return [WriteBackCandidate(*r) for r in rows]


def card_candidates(conn: Connection, institution: str, year: int) -> list[CardCandidate]:
    rows = conn.execute(CARD_CANDIDATES, {"i": institution, "y": year})
    return [CardCandidate._make((*r[:-1], bool(r[-1]))) for r in rows]


def retired_cards(conn: Connection, institution: str, year: int) -> list[RetiredCard]:
    return [RetiredCard(*r) for r in conn.execute(RETIRED_CARDS, {"i": institution, "y": year})]


def retire_cards(conn: Connection, escns: Sequence[str]) -> None:
    """Cards that no longer belong to their badge's holder: INACTIVE wanted for good, out of the badge's
    way (it gets a new card under its holder's ESI), moved in the feed."""
    if escns:
        now = utcnow()
        conn.execute(
            update(Card)
            .where(Card.escn == bindparam("k"), Card.retired_at.is_(None))
            .values(retired_at=now, desired_status="INACTIVE", changed_at=now),
            [{"k": e} for e in escns],
        )


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
    "source_digest",
    "vanished_at",  # always cleared: the row is in Esse3
    "updated_at",
)


class ReadBadge(NamedTuple):
    """A validated badge as read (the badge belongs to its career's academic year)."""

    bdg_id: int
    stu_id: int
    pers_id: int
    academic_year: int
    valid_from: dt.date
    valid_to: dt.date
    annulled: bool
    printed_on: dt.date | None
    kind: str
    data_mod: dt.datetime
    digest: str


class StoredBadge(NamedTuple):
    stu_id: int
    academic_year: int
    source_digest: str | None
    vanished: bool
    content: tuple[object, ...]  # what a card is made of: career, validity, annulment, kind


def badge_content(b: ReadBadge) -> tuple[object, ...]:
    return (b.stu_id, b.pers_id, b.academic_year, b.valid_from, b.valid_to, b.annulled, b.printed_on, b.kind)


def existing_badges(conn: Connection, institution: str, bdg_ids: Sequence[int]) -> dict[int, StoredBadge]:
    rows = conn.execute(
        text(
            "SELECT bdg_id, stu_id, academic_year, source_digest, vanished_at, pers_id, valid_from, "
            "valid_to, annulled, printed_on, kind FROM badges WHERE institution = :i AND bdg_id IN :ids"
        )
        .bindparams(bindparam("ids", expanding=True))
        .columns(valid_from=Date, valid_to=Date, printed_on=Date, annulled=Boolean, vanished_at=DateTime),
        {"i": institution, "ids": list(bdg_ids)},
    )
    return {
        r[0]: StoredBadge(
            r[1], r[2], r[3], r[4] is not None, (r[1], r[5], r[2], r[6], r[7], r[8], r[9], r[10])
        )
        for r in rows
    }


def badges_of_vanished_careers(conn: Connection, institution: str, bdg_ids: Sequence[int]) -> set[int]:
    if not bdg_ids:
        return set()
    rows = conn.execute(
        text(
            "SELECT b.bdg_id FROM badges b JOIN careers c ON c.institution = b.institution "
            "AND c.stu_id = b.stu_id WHERE b.institution = :i AND b.bdg_id IN :ids "
            "AND c.vanished_at IS NOT NULL"
        ).bindparams(bindparam("ids", expanding=True)),
        {"i": institution, "ids": list(bdg_ids)},
    )
    return set(rows.scalars())


def upsert_badges(conn: Connection, institution: str, badges: Sequence[ReadBadge]) -> None:
    now = utcnow()
    Bulk(conn).upsert(
        "badges",
        BADGE_COLUMNS,
        ("institution", "bdg_id"),
        (
            (
                institution,
                b.bdg_id,
                b.stu_id,
                b.pers_id,
                b.academic_year,
                b.valid_from,
                b.valid_to,
                b.annulled,
                b.printed_on,
                b.kind,
                b.data_mod,
                b.digest,
                None,
                now,
            )
            for b in badges
        ),
        temporal=("valid_from", "valid_to", "printed_on", "source_data_mod", "vanished_at", "updated_at"),
    )


def follow_badge_careers(conn: Connection, institution: str, moved: Sequence[tuple[int, int]]) -> None:
    """(bdg_id, stu_id) of badges now on another career: their current cards follow when that career
    is the same person's (a card of another person stays where it was and is retired by `esc_cards`)."""
    if moved:
        conn.execute(
            text(
                "UPDATE cards SET stu_id = :s WHERE institution = :i AND bdg_id = :b AND retired_at IS NULL "
                "AND EXISTS (SELECT 1 FROM careers c JOIN persons p ON p.institution = c.institution "
                "AND p.pers_id = c.pers_id WHERE c.institution = :i AND c.stu_id = :s AND p.esi = cards.esi)"
            ),
            [{"i": institution, "b": b, "s": s} for b, s in moved],
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


def current_cards(conn: Connection, institution: str) -> dict[int, str]:
    """Badge → the ESCN of its current registered card."""
    rows = conn.execute(
        text(
            "SELECT bdg_id, escn FROM cards "
            "WHERE institution = :i AND state = 'registered' AND retired_at IS NULL"
        ),
        {"i": institution},
    )
    return {int(b): e for b, e in rows}


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
