"""Erasure in the state DB: whose data may be due (facts for etl.domain.retention), the intents
recorded before the Router's DELETEs and the confirmations after, the scrub at home, old audit rows."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import Connection, bindparam, delete, select, update

from etl.domain.retention import CardFacts, EraseReason, ErasureTarget, PersonFacts
from etl.domain.states import ExportStatus, SyncState
from etl.store.models import (
    ApiAudit,
    BadgeWriteBack,
    Card,
    Career,
    Export,
    Person,
    QrImage,
    WalletRegistration,
    utcnow,
)

_AT_ROUTER = (SyncState.REGISTERED, SyncState.PENDING, SyncState.FAILED)  # sent, or maybe sent


@dataclass
class _Person:
    at_router: bool
    consented: bool
    reason: EraseReason | None
    cards: list[CardFacts] = field(default_factory=list)
    escns: list[str] = field(default_factory=list)


def person_facts(conn: Connection, institution: str, pers_id: int | None = None) -> list[PersonFacts]:
    """Persons not erased (all of the university's, or one), with every card of theirs."""
    consented = (
        select(Career.pers_id)
        .where(Career.institution == institution, Career.consent.in_(("S", "s")))
        .scalar_subquery()
    )
    stmt = (
        select(
            Person.pers_id,
            Person.esi,
            Person.state,
            Person.erase_reason,
            Person.pers_id.in_(consented),
            Card.escn,
            Card.desired_status,
            Card.expires_at,
            Card.changed_at,
            Card.deleted_at,
        )
        .outerjoin(Card, (Card.institution == Person.institution) & (Card.esi == Person.esi))
        .where(Person.institution == institution, Person.erased_at.is_(None))
        .order_by(Person.pers_id, Person.esi, Card.escn)
    )
    if pers_id is not None:
        stmt = stmt.where(Person.pers_id == pers_id)
    people: dict[tuple[int, str], _Person] = {}
    for r in conn.execute(stmt):
        p = people.get((r[0], r[1]))
        if p is None:
            reason = EraseReason(r[3]) if r[3] else None
            p = people[(r[0], r[1])] = _Person(r[2] in _AT_ROUTER, bool(r[4]), reason)
        if r[5] is not None:
            p.cards.append(CardFacts(r[6], r[7], r[8]))
            if r[9] is None:
                p.escns.append(r[5])
    return [
        PersonFacts(pers_id, esi, p.at_router, p.consented, tuple(p.cards), tuple(p.escns), p.reason)
        for (pers_id, esi), p in people.items()
    ]


def target_of(conn: Connection, institution: str, pers_id: int, reason: EraseReason) -> list[ErasureTarget]:
    """Everything of ``pers_id`` still to erase (one target per ESI the person had)."""
    return [
        ErasureTarget(f.pers_id, f.esi, f.pending_reason or reason, f.escns, f.at_router)
        for f in person_facts(conn, institution, pers_id)
    ]


def record_intents(conn: Connection, institution: str, targets: Sequence[ErasureTarget]) -> None:
    """Committed before any DELETE is sent: the next run finishes what this one could not."""
    now = utcnow()
    conn.execute(
        update(Person)
        .where(Person.institution == institution, Person.esi == bindparam("e"))
        .where(Person.erase_requested_at.is_(None))
        .values(erase_requested_at=now, erase_reason=bindparam("r")),
        [{"e": t.esi, "r": t.reason} for t in targets],
    )
    escns = [{"k": e} for t in targets for e in t.escns]
    if escns:
        conn.execute(
            update(Card)
            .where(Card.escn == bindparam("k"), Card.delete_requested_at.is_(None))
            .values(delete_requested_at=now),
            escns,
        )


def confirm_cards(conn: Connection, escns: Sequence[str]) -> None:
    if escns:
        conn.execute(
            update(Card).where(Card.escn == bindparam("k")).values(deleted_at=utcnow()),
            [{"k": e} for e in escns],
        )


def scrub(conn: Connection, institution: str, target: ErasureTarget) -> list[int]:
    """The person is gone at the Router: names, e-mail and matricola off their careers, their QR
    images deleted, the person marked erased, and the exports of their partitions marked for rebuild:
    the next run writes a new full export without them and deletes the old files (etl.assets.exports).
    Returns the academic years their careers and cards were in."""
    now = utcnow()
    conn.execute(
        update(Career)
        .where(Career.institution == institution, Career.pers_id == target.pers_id)
        .values(first_name="", last_name="", email=None, matricola="", erased_at=now)
    )
    theirs = (Card.institution == institution) & (Card.esi == target.esi)
    cards = select(Card.escn).where(theirs)
    conn.execute(delete(QrImage).where(QrImage.escn.in_(cards)))
    conn.execute(delete(WalletRegistration).where(WalletRegistration.serial_number.in_(cards)))
    # Deleted cards are also retired: out of their badge's way, should consent bring the badge back.
    conn.execute(update(Card).where(theirs, Card.deleted_at.is_(None)).values(deleted_at=now))
    conn.execute(update(Card).where(theirs, Card.retired_at.is_(None)).values(retired_at=now))
    person = (Person.institution == institution) & (Person.esi == target.esi)
    conn.execute(update(Person).where(person).values(erased_at=now))
    years = years_of(conn, institution, [target.pers_id])
    conn.execute(
        update(Export)
        .where(
            Export.institution == institution,
            Export.academic_year.in_(sorted(years)),
            Export.status == ExportStatus.READY,
        )
        .values(status=ExportStatus.REBUILD)
    )
    return sorted(years)


def years_of(conn: Connection, institution: str, pers_ids: Sequence[int]) -> set[int]:
    """The academic years (partitions) of these persons' careers and cards."""
    if not pers_ids:
        return set()
    ids = sorted(set(pers_ids))
    careers = select(Career.academic_year).where(Career.institution == institution, Career.pers_id.in_(ids))
    esis = select(Person.esi).where(Person.institution == institution, Person.pers_id.in_(ids))
    cards = select(Card.academic_year).where(Card.institution == institution, Card.esi.in_(esis))
    return {int(y) for y in conn.execute(careers.union(cards)).scalars()}


def write_backs_of(
    conn: Connection, institution: str, pers_id: int
) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """What esc-sync wrote into Esse3 for this person: (stu_id, ESI) on careers, (bdg_id, ESCN) on badges."""
    esis = conn.execute(
        select(Career.stu_id, Career.esi_written).where(
            Career.institution == institution, Career.pers_id == pers_id, Career.esi_written.is_not(None)
        )
    ).all()
    stu_ids = select(Career.stu_id).where(Career.institution == institution, Career.pers_id == pers_id)
    badges = conn.execute(
        select(BadgeWriteBack.bdg_id, BadgeWriteBack.escn)
        .join(Card, Card.escn == BadgeWriteBack.escn)
        .where(BadgeWriteBack.institution == institution, Card.stu_id.in_(stu_ids))
    ).all()
    return [(int(s), str(e)) for s, e in esis], [(int(b), str(e)) for b, e in badges]


def forget_write_backs(conn: Connection, institution: str, pers_id: int, bdg_ids: Sequence[int]) -> None:
    """Esse3 no longer carries them: nothing of esc-sync's is left there to take back."""
    conn.execute(
        update(Career)
        .where(Career.institution == institution, Career.pers_id == pers_id)
        .values(esi_written=None)
    )
    if bdg_ids:
        conn.execute(
            delete(BadgeWriteBack).where(
                BadgeWriteBack.institution == institution, BadgeWriteBack.bdg_id.in_(sorted(bdg_ids))
            )
        )


def delete_audit_before(conn: Connection, cutoff: dt.datetime) -> int:
    return int(conn.execute(delete(ApiAudit).where(ApiAudit.at < cutoff)).rowcount or 0)


@dataclass(frozen=True)
class Held:
    """What the state DB holds of one person (counts and years only), and what esc-sync wrote into
    Esse3 for them, which stays there: Esse3 is the university's."""

    careers: int  # careers still carrying names
    qr_images: int
    years: tuple[int, ...]  # the partitions their careers and cards are in
    esi_on_careers: int  # careers whose CODICE_ESI esc-sync wrote
    escn_on_badges: int  # badges whose ESCN esc-sync wrote

    def in_esse3(self) -> list[str]:
        if not (self.esi_on_careers or self.escn_on_badges):
            return []
        return [
            f"left in Esse3: CODICE_ESI on {self.esi_on_careers} career(s) and the ESCN on "
            f"{self.escn_on_badges} badge(s), written there by esc-sync (--esse3 takes them back)"
        ]


def held_of(conn: Connection, institution: str, pers_id: int) -> Held:
    mine = (Career.institution == institution) & (Career.pers_id == pers_id)
    careers = conn.execute(
        select(Career.stu_id, Career.academic_year, Career.erased_at, Career.esi_written).where(mine)
    ).all()
    esis = select(Person.esi).where(Person.institution == institution, Person.pers_id == pers_id)
    cards = conn.execute(
        select(Card.escn, Card.academic_year).where(Card.institution == institution, Card.esi.in_(esis))
    ).all()
    escns = [c.escn for c in cards]
    qr = conn.execute(select(QrImage.escn).where(QrImage.escn.in_(escns))).all() if escns else []
    ours = (BadgeWriteBack.institution == institution) & BadgeWriteBack.escn.in_(escns)
    written = conn.execute(select(BadgeWriteBack.bdg_id).where(ours)).all() if escns else []
    return Held(
        careers=sum(1 for c in careers if c.erased_at is None),
        qr_images=len(qr),
        years=tuple(sorted({c.academic_year for c in careers} | {c.academic_year for c in cards})),
        esi_on_careers=sum(1 for c in careers if c.esi_written),
        escn_on_badges=len(written),
    )
