"""What the Router should hold for each badge's card, and the calls that bring it there (pure: the
`esc_cards` asset carries the plan out). The seams with the state DB are the NamedTuples below."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from etl.domain.escn import EscnMinter
from etl.domain.esi import same_esi
from etl.domain.lifecycle import (
    ACTIVE,
    CARD_TYPE_OF_BADGE,
    INACTIVE,
    Action,
    BadgeFacts,
    CardTarget,
    card_action,
    card_target,
    consented,
)
from etl.domain.router_bodies import card_body, card_update_body
from etl.domain.states import CardStatus, SyncState


class CardRules(Protocol):
    """What planning needs of a university's configuration (etl.config.Ateneo has it)."""

    @property
    def pic(self) -> str: ...
    @property
    def consent(self) -> str: ...


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
    person_state: SyncState | None
    escn: str | None  # None: no card yet
    card_state: SyncState | None
    router_status: CardStatus | None
    synced_expiry: dt.date | None
    desired_status: CardStatus | None
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
    state: SyncState
    router_status: CardStatus | None


@dataclass(frozen=True)
class CardWork:
    escn: str
    bdg_id: int
    stu_id: int
    esi: str
    card_type: str
    issued_at: dt.date
    target: CardTarget
    body: dict[str, Any]  # the POST body (CardUpdateView with cardNumber)
    create: bool
    new: bool  # no card row yet: record the intent (a freshly minted ESCN)
    pic: str
    today: dt.date

    @property
    def put_body(self) -> dict[str, Any]:
        return card_update_body(self.body)

    @property
    def target_expired(self) -> bool:
        """The wanted expiry is already past: the card reads EXPIRED whatever we send."""
        return self.target.expires_at < self.today


class CardPlan(NamedTuple):
    work: list[CardWork]
    waiting: int  # badges whose person is not (yet) at the Router
    badge_expired: int  # badges of active careers whose validity ended: never extended, reported


def cards_to_retire(rows: Sequence[CardCandidate]) -> list[str]:
    """Current cards registered for another person than their badge's career now has (an Esse3 person
    merge, a badge moved to another student's career), or whose career's person has no ESI: the Router
    never moves a card to another person, so the card is retired (INACTIVE for good, under the ESI it
    was registered for) and the badge gets a new card under its holder's ESI."""
    return [
        r.escn
        for r in rows
        if r.escn is not None
        and r.card_esi is not None
        and (r.esi is None or not same_esi(r.card_esi, r.esi))
    ]


def plan_cards(
    rows: Sequence[CardCandidate],
    ateneo: CardRules,
    minter: EscnMinter,
    today: dt.date,
    retired: Sequence[RetiredCard] = (),
) -> CardPlan:
    """Pure decision per badge (whose current card, if any, belongs to its holder: see
    ``cards_to_retire``), and per retired card still to be deactivated."""
    work, waiting, expired = [], 0, 0
    for r in rows:
        if r.esi is None or r.person_state is None:
            continue  # the career's person has no ESI: nothing to attach a card to (yet)
        ok = consented(ateneo.consent, r.consent) and r.person_state != SyncState.OPTED_OUT
        facts = BadgeFacts(r.career_status, r.annulled, r.valid_from, r.valid_to, ok, r.in_source)
        target = card_target(facts, today)
        synced = (
            CardTarget(r.router_status, r.synced_expiry)
            if r.card_state == SyncState.REGISTERED and r.router_status and r.synced_expiry
            else None
        )
        action = card_action(target, exists=r.escn is not None, synced=synced, today=today)
        if target.status == ACTIVE and target.expires_at < today:
            expired += 1  # reported: the university must extend the badge or issue a new one
        if action in (Action.NONE, Action.SKIP, Action.BADGE_EXPIRED):
            continue
        if action is Action.REGISTER and r.person_state != SyncState.REGISTERED:
            waiting += 1  # the person is not (yet) at the Router: nothing to attach a card to
            continue
        card_type = CARD_TYPE_OF_BADGE[r.kind]
        number = r.escn or minter.mint()
        body = card_body(number, r.esi, ateneo.pic, card_type, target.status, r.valid_from, target.expires_at)
        work.append(
            CardWork(
                number,
                r.bdg_id,
                r.stu_id,
                r.esi,
                card_type,
                r.valid_from,
                target,
                body,
                create=action is Action.REGISTER,
                new=r.escn is None,
                pic=ateneo.pic,
                today=today,
            )
        )
    for c in retired:
        target = CardTarget(INACTIVE, c.expires_at)
        synced = (
            CardTarget(c.router_status, c.expires_at)
            if c.state == SyncState.REGISTERED and c.router_status
            else None
        )
        action = card_action(target, exists=True, synced=synced, today=today)
        if action not in (Action.REGISTER, Action.UPDATE):
            continue
        body = card_body(c.escn, c.esi, ateneo.pic, c.card_type, INACTIVE, c.issued_at, c.expires_at)
        work.append(
            CardWork(
                c.escn, c.bdg_id, c.stu_id, c.esi, c.card_type, c.issued_at, target, body,
                create=action is Action.REGISTER, new=False, pic=ateneo.pic, today=today,
            )
        )  # fmt: skip
    return CardPlan(work, waiting, expired)
