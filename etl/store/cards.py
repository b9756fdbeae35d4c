"""Cards in the state DB: which badges need one, the intents recorded before each Router call (the
minted ESCN) and the confirmations after, retired cards, the ESCN clock, the counts."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import Boolean, Connection, Date, bindparam, delete, func, select, text, update

from etl.domain.card_plan import CardCandidate, CardWork, RetiredCard
from etl.domain.states import CardStatus, SyncState
from etl.domain.sync_outcomes import CardOutcome
from etl.store.bulk import Bulk
from etl.store.models import Card, Person, optional_state, optional_status, utcnow

# Each badge of the partition with its career, the career's person (none yet: NULLs) and its current card.
CARD_CANDIDATES = text("""
SELECT b.bdg_id, b.stu_id, b.kind, b.valid_from, b.valid_to, b.annulled,
       c.status, c.consent, p.esi, CASE WHEN p.erased_at IS NULL THEN p.state END,
       k.escn, k.state, k.router_status, k.expires_at, k.desired_status, k.esi,
       CASE WHEN b.vanished_at IS NULL AND c.vanished_at IS NULL THEN 1 ELSE 0 END
FROM badges b
JOIN careers c ON c.institution = b.institution AND c.stu_id = b.stu_id
LEFT JOIN persons p ON p.institution = b.institution AND p.pers_id = c.pers_id
LEFT JOIN cards k ON k.institution = b.institution AND k.bdg_id = b.bdg_id AND k.retired_at IS NULL
WHERE b.institution = :i AND b.academic_year = :y
  AND c.erased_at IS NULL  -- an erased career's badges get no card again
  AND (p.erase_requested_at IS NULL OR p.erased_at IS NOT NULL)  -- nor while their holder is erased
ORDER BY b.bdg_id
""").columns(valid_from=Date, valid_to=Date, expires_at=Date, annulled=Boolean)

# Retired cards (their badge's career changed person) the Router may still hold as valid.
RETIRED_CARDS = text(f"""
SELECT escn, bdg_id, stu_id, esi, card_type, issued_at, expires_at, state, router_status
FROM cards
WHERE institution = :i AND academic_year = :y AND retired_at IS NOT NULL AND state <> '{SyncState.FAILED}'
  AND deleted_at IS NULL
  AND NOT (state = '{SyncState.REGISTERED}' AND router_status = '{CardStatus.INACTIVE}')
ORDER BY escn
""").columns(issued_at=Date, expires_at=Date)


def card_candidates(conn: Connection, institution: str, year: int) -> list[CardCandidate]:
    rows = conn.execute(CARD_CANDIDATES, {"i": institution, "y": year})
    return [
        CardCandidate._make(
            (
                *r[:9],
                optional_state(r[9]),
                r[10],
                optional_state(r[11]),
                optional_status(r[12]),
                r[13],
                optional_status(r[14]),
                r[15],
                bool(r[16]),
            )
        )
        for r in rows
    ]


def retired_cards(conn: Connection, institution: str, year: int) -> list[RetiredCard]:
    rows = conn.execute(RETIRED_CARDS, {"i": institution, "y": year})
    return [RetiredCard._make((*r[:7], SyncState(r[7]), optional_status(r[8]))) for r in rows]


def retire_cards(conn: Connection, escns: Sequence[str]) -> None:
    """Cards that no longer belong to their badge's holder: INACTIVE wanted for good, out of the badge's
    way (it gets a new card under its holder's ESI), moved in the feed."""
    if escns:
        now = utcnow()
        conn.execute(
            update(Card)
            .where(Card.escn == bindparam("k"), Card.retired_at.is_(None))
            .values(retired_at=now, desired_status=CardStatus.INACTIVE, changed_at=now),
            [{"k": e} for e in escns],
        )


def record_card_intents(conn: Connection, institution: str, year: int, works: Sequence[CardWork]) -> None:
    """New cards with their minted ESCN, state pending, committed before the Router call."""
    now = utcnow()
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
    rows = (
        (
            w.escn, institution, year, w.bdg_id, w.stu_id, w.esi, w.card_type, w.issued_at,
            w.target.expires_at, w.target.status, SyncState.PENDING, now, now,
        )
        for w in works
        if w.new
    )  # fmt: skip
    Bulk(conn).upsert(
        "cards",
        cols,
        ("escn",),
        rows,
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
            Card.escn.in_([p["k"] for p in params]),
            Card.first_sync_at.is_(None),
            Card.state == SyncState.REGISTERED,
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


def count_cards(conn: Connection, institution: str, year: int) -> dict[str, int]:
    rows = conn.execute(
        text(
            "SELECT state, desired_status, COUNT(*) FROM cards WHERE institution = :i AND academic_year = :y "
            "GROUP BY state, desired_status"
        ),
        {"i": institution, "y": year},
    )
    return {f"{state}_{status.lower()}": n for state, status, n in rows}


def forget_card_intents(conn: Connection, escns: Sequence[str]) -> None:
    """Drop recorded numbers that turned out not to be ours to use (never a confirmed card)."""
    if escns:
        conn.execute(
            delete(Card).where(Card.escn == bindparam("k"), Card.state != SyncState.REGISTERED),
            [{"k": e} for e in escns],
        )


def record_card_errors(conn: Connection, outcomes: Sequence[CardOutcome]) -> None:
    """A failed call leaves the confirmed Router state alone; a permanent refusal of a card never
    registered marks it failed (it stays quarantined until the data changes)."""
    if not outcomes:
        return
    conn.execute(
        text(
            "UPDATE cards SET last_error = :err, last_sync_at = :now, "
            f"state = CASE WHEN state = '{SyncState.PENDING}' AND :permanent THEN '{SyncState.FAILED}' "
            "ELSE state END "
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
        select(Card.bdg_id, Card.escn).where(
            Card.institution == institution, Card.state == SyncState.REGISTERED, Card.retired_at.is_(None)
        )
    )
    return {int(b): e for b, e in rows}


def registered_totals(conn: Connection, institution: str) -> dict[str, int]:
    """What the Router should hold for us: registered persons and registered cards."""
    persons = conn.execute(
        select(func.count())
        .select_from(Person)
        .where(Person.institution == institution, Person.state == SyncState.REGISTERED)
    ).scalar_one()
    cards = conn.execute(
        select(func.count()).where(Card.institution == institution, Card.state == SyncState.REGISTERED)
    ).scalar_one()
    return {"persons": persons, "cards": cards}
