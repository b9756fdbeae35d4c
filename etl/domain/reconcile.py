"""Drift between what the state DB says the Router holds and what the Router holds (pure rules).

Repaired where the rule is clear, since the state DB follows Esse3 and is the source of truth:
- a person or card registered here and absent at the Router is registered again (requeued);
- a card whose status or expiry at the Router differs from what was confirmed gets the Router's values
  recorded, so the next run sees the difference and sends the update.
Reported only, because no rule says who is right: cards at the Router that we never registered (another
system writing for the same PIC?), cards whose person or type differ, and persons there with no card
whom we never registered (a person of ours without a card is normal: the badge is still to come).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from etl.domain.states import CardStatus


@dataclass(frozen=True)
class CardView:
    """One card as the Router holds it, or as the state DB recorded it confirmed."""

    esi: str
    status: str
    expires_at: dt.date
    card_type: str


@dataclass(frozen=True)
class Drift:
    missing_persons: list[str] = field(default_factory=list)  # ESIs: requeued
    missing_cards: list[str] = field(default_factory=list)  # ESCNs: requeued
    stale_cards: dict[str, CardView] = field(default_factory=dict)  # ESCN → the Router's: recorded, updated
    unknown_cards: list[str] = field(default_factory=list)  # ESCNs at the Router only: reported
    mismatched_cards: list[str] = field(default_factory=list)  # another person or type there: reported
    persons_without_cards: list[str] = field(default_factory=list)  # not ours, no card: reported

    def counts(self) -> dict[str, int]:
        return {
            "missing_persons": len(self.missing_persons),
            "missing_cards": len(self.missing_cards),
            "stale_cards": len(self.stale_cards),
            "unknown_cards": len(self.unknown_cards),
            "mismatched_cards": len(self.mismatched_cards),
            "persons_without_cards": len(self.persons_without_cards),
        }

    @property
    def repairable(self) -> int:
        return len(self.missing_persons) + len(self.missing_cards) + len(self.stale_cards)

    @property
    def reported_only(self) -> int:
        return len(self.unknown_cards) + len(self.mismatched_cards) + len(self.persons_without_cards)


def as_read(card: CardView, today: dt.date) -> CardView:
    """What a verifier reads: the Router shows every card past its expiry as EXPIRED."""
    return (
        card
        if card.expires_at >= today
        else CardView(card.esi, CardStatus.EXPIRED, card.expires_at, card.card_type)
    )


def find_drift(
    local_persons: Collection[str],
    local_cards: Mapping[str, CardView],
    remote_persons: Collection[str],
    remote_cards: Mapping[str, CardView],
    today: dt.date,
) -> Drift:
    """``local_*``: registered and confirmed here; ``remote_*``: walked at the Router (same PIC)."""
    remote_people = set(remote_persons)
    drift = Drift(
        missing_persons=sorted(set(local_persons) - remote_people),
        missing_cards=sorted(set(local_cards) - set(remote_cards)),
        unknown_cards=sorted(set(remote_cards) - set(local_cards)),
        persons_without_cards=sorted(
            remote_people - set(local_persons) - {c.esi for c in remote_cards.values()}
        ),
    )
    for escn in sorted(set(local_cards) & set(remote_cards)):
        mine, theirs = local_cards[escn], remote_cards[escn]
        if (mine.esi, mine.card_type) != (theirs.esi, theirs.card_type):
            drift.mismatched_cards.append(escn)
        elif as_read(mine, today) != as_read(theirs, today):
            drift.stale_cards[escn] = theirs
    return drift
