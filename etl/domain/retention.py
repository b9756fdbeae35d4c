"""How long personal data is kept, and whose is due for erasure (pure: etl.erasure carries it out).

``[retention]`` in the configuration: ``router_person_days`` (365): a person whose cards have all been
INACTIVE or expired that long is erased at the Router and at home; ``consent_withdrawn_days`` (0): the
same for a person who withdrew consent (opt-in universities), from the day the cards went INACTIVE;
``audit_days`` (400): how long ``api_audit`` rows are kept.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from etl.domain.states import CardStatus
from etl.errors import ConfigError

RETENTION_KEYS = frozenset(("router_person_days", "consent_withdrawn_days", "audit_days"))


class EraseReason(enum.StrEnum):
    RETENTION = "retention"  # every card ended long enough ago
    CONSENT = "consent"  # consent withdrawn (opt-in universities)
    REQUEST = "request"  # the data subject asked (`esc-sync erase`)


@dataclass(frozen=True)
class RetentionPolicy:
    router_person_days: int = 365
    consent_withdrawn_days: int = 0
    audit_days: int = 400

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> RetentionPolicy:
        values = {}
        for name in RETENTION_KEYS:
            value = raw.get(name, getattr(cls, name))
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 36_500:
                message = f"retention: field {name}: {value!r} must be a number of days from 0 to 36500"
                raise ConfigError(message)
            values[name] = value
        return cls(**values)


@dataclass(frozen=True)
class CardFacts:
    desired_status: CardStatus
    expires_at: dt.date
    changed_at: dt.datetime  # the last change of what the Router should hold (e.g. set INACTIVE)


def card_ended_on(card: CardFacts, today: dt.date) -> dt.date | None:
    """The day a card stopped being valid: set INACTIVE, or expired; None while it is valid."""
    if card.desired_status != CardStatus.ACTIVE:
        return min(card.changed_at.date(), card.expires_at)
    return card.expires_at if card.expires_at < today else None


def erase_reason(
    cards: Iterable[CardFacts], consent_withdrawn: bool, today: dt.date, policy: RetentionPolicy
) -> EraseReason | None:
    """Whether a person is due for erasure, and why. A person with any valid card is not; with none
    at all, there is nothing the Router holds beyond the person (their careers decide: not here)."""
    ended = [card_ended_on(c, today) for c in cards]
    if not ended or any(e is None for e in ended):
        return None
    last = max(e for e in ended if e is not None)
    if consent_withdrawn and last + dt.timedelta(days=policy.consent_withdrawn_days) <= today:
        return EraseReason.CONSENT
    if last + dt.timedelta(days=policy.router_person_days) <= today:
        return EraseReason.RETENTION
    return None


@dataclass(frozen=True)
class PersonFacts:
    """What deciding a person's erasure needs (etl.store.erasure reads it)."""

    pers_id: int
    esi: str
    at_router: bool  # the person was (or may have been) registered: DELETE it at the Router
    consented: bool  # a career of theirs carries consent 'S'
    cards: tuple[CardFacts, ...]  # every card of theirs, deleted or not
    escns: tuple[str, ...]  # their cards not yet deleted at the Router
    pending_reason: EraseReason | None  # an erasure a previous run left unfinished


@dataclass(frozen=True)
class ErasureTarget:
    pers_id: int
    esi: str
    reason: EraseReason
    escns: tuple[str, ...]
    at_router: bool
