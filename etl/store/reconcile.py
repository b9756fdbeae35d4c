"""The state DB's side of reconciliation (etl.domain.reconcile): what we say the Router holds, and the
repairs, each returning the academic years whose partitions must run again to carry them out."""

from __future__ import annotations

from collections.abc import Collection, Mapping

from sqlalchemy import Connection, bindparam, select, update

from etl.domain.reconcile import CardView
from etl.domain.states import SyncState
from etl.store.models import Card, Career, Person, utcnow


def registered_persons(conn: Connection, institution: str) -> set[str]:
    query = select(Person.esi).where(
        Person.institution == institution,
        Person.state == SyncState.REGISTERED,
        Person.erase_requested_at.is_(None),  # erased, or being erased: the Router should not hold them
    )
    return set(conn.execute(query).scalars())


def registered_cards(conn: Connection, institution: str) -> dict[str, CardView]:
    """Cards the Router confirmed, as it confirmed them."""
    rows = conn.execute(
        select(Card.escn, Card.esi, Card.router_status, Card.expires_at, Card.card_type).where(
            Card.institution == institution,
            Card.state == SyncState.REGISTERED,
            Card.router_status.is_not(None),
            Card.delete_requested_at.is_(None),
        )
    )
    return {r.escn: CardView(r.esi, r.router_status, r.expires_at, r.card_type) for r in rows}


def erased(conn: Connection, institution: str) -> tuple[set[str], set[str]]:
    """ESIs of erased persons and ESCNs of cards deleted at the Router: the Router must hold none."""
    persons = select(Person.esi).where(Person.institution == institution, Person.erased_at.is_not(None))
    cards = select(Card.escn).where(Card.institution == institution, Card.deleted_at.is_not(None))
    return set(conn.execute(persons).scalars()), set(conn.execute(cards).scalars())


def reopen_erasures(
    conn: Connection, institution: str, esis: Collection[str], escns: Collection[str]
) -> None:
    """Erased here, still at the Router (a DELETE the Router lost, or data put back by hand): the
    erasure is open again, and the next erasure run deletes them again (etl.erasure)."""
    if escns:
        conn.execute(
            update(Card).where(Card.escn.in_(bindparam("k", expanding=True))).values(deleted_at=None),
            {"k": sorted(escns)},
        )
        owners = select(Card.esi).where(Card.escn.in_(bindparam("k", expanding=True)))
        esis = set(esis) | set(conn.execute(owners, {"k": sorted(escns)}).scalars())
    if esis:
        conn.execute(
            update(Person)
            .where(Person.institution == institution, Person.esi.in_(bindparam("e", expanding=True)))
            .values(erased_at=None),
            {"e": sorted(esis)},
        )


def requeue_persons(conn: Connection, institution: str, esis: Collection[str]) -> set[int]:
    """Registered here, absent at the Router: the next run of their partitions registers them again."""
    if not esis:
        return set()
    esi_list = sorted(esis)
    conn.execute(
        update(Person)
        .where(Person.institution == institution, Person.esi.in_(bindparam("esis", expanding=True)))
        .values(state=SyncState.PENDING, synced_hash=None),
        {"esis": esi_list},
    )
    years = (
        select(Career.academic_year)
        .distinct()
        .join(Person, (Person.institution == Career.institution) & (Person.pers_id == Career.pers_id))
    )
    return set(
        conn.execute(
            years.where(Person.institution == institution, Person.esi.in_(bindparam("esis", expanding=True))),
            {"esis": esi_list},
        ).scalars()
    )


def requeue_cards(conn: Connection, institution: str, escns: Collection[str]) -> set[int]:
    """Registered here, absent at the Router: registered again (same ESCN) by the next run."""
    return _set_cards(conn, institution, {e: {"state": SyncState.PENDING} for e in escns})


def record_router_cards(conn: Connection, institution: str, cards: Mapping[str, CardView]) -> set[int]:
    """The Router's status and expiry recorded as confirmed: the next run sees they differ from what
    the badge wants and sends the update."""
    return _set_cards(
        conn,
        institution,
        {e: {"router_status": c.status, "expires_at": c.expires_at} for e, c in cards.items()},
    )


def _set_cards(conn: Connection, institution: str, values: Mapping[str, Mapping[str, object]]) -> set[int]:
    years: set[int] = set()
    for escn, changes in values.items():  # few rows: drift is the exception
        year = conn.execute(
            update(Card)
            .where(Card.institution == institution, Card.escn == escn)
            .values(**changes, changed_at=utcnow())
            .returning(Card.academic_year)
        ).scalar_one_or_none()
        if year is not None:
            years.add(year)
    return years
