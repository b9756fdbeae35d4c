"""Card lifecycle: what the Router should hold for a badge, given the career, the badge and consent,
and what to do about it. Pure functions: the cards asset only carries out the decision."""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from etl.domain.states import CardStatus

ACTIVE, INACTIVE = CardStatus.ACTIVE, CardStatus.INACTIVE  # the two statuses esc-sync sends
CARD_TYPE_OF_BADGE = {"F": "PASSIVE", "V": "SMART_PASSIVE"}  # printed / virtual badge


class Action(enum.Enum):
    REGISTER = "register"  # mint an ESCN, record it, POST the card
    UPDATE = "update"  # PUT the card (status and/or expiry changed)
    NONE = "none"  # the Router already holds what we want
    SKIP = "skip"  # never register: an annulled badge, a closed career, no consent
    BADGE_EXPIRED = "badge_expired"  # never register: the badge's validity is over (reported)


@dataclass(frozen=True)
class CardTarget:
    status: CardStatus
    expires_at: dt.date


@dataclass(frozen=True)
class BadgeFacts:
    career_status: str  # A, S, X (I never reaches here: not finalised)
    annulled: bool
    valid_from: dt.date
    valid_to: dt.date
    consented: bool
    in_source: bool = True  # the badge and its career are still in Esse3 (not deleted)


def consented(mode: str, consent_flag: str | None) -> bool:
    """``automatic``: registered on a public-interest basis; ``opt_in``: only after an explicit 'S'."""
    return mode == "automatic" or (consent_flag or "").upper() == "S"


def card_target(f: BadgeFacts, today: dt.date) -> CardTarget:
    """ACTIVE while the career is active or suspended, the badge not annulled, consent given and both
    still in Esse3. A closed career, an annulled badge, withdrawn consent or a deletion deactivate.
    The expiry is always the badge's validity: a badge whose validity ended is never extended here
    (the card reads EXPIRED); a reactivated career's card comes back when Esse3 extends the badge
    (DATA_FIN) or issues a new one."""
    if f.career_status in ("A", "S") and not f.annulled and f.consented and f.in_source:
        return CardTarget(ACTIVE, f.valid_to)
    return CardTarget(INACTIVE, max(f.valid_to, f.valid_from))


def card_action(target: CardTarget, *, exists: bool, synced: CardTarget | None, today: dt.date) -> Action:
    """``exists``: a card row (ESCN recorded) exists; ``synced``: what the Router last confirmed.

    The Router revives an EXPIRED card only together with a future expiry: a card it holds as expired
    that should stay expired (say a career closed after the card ran out) is left alone, since any
    PUT without a future expiry is refused and it already reads EXPIRED to every verifier."""
    if not exists:
        if target.status != ACTIVE:
            return Action.SKIP
        return Action.BADGE_EXPIRED if target.expires_at < today else Action.REGISTER
    if synced is None:
        return Action.REGISTER  # recorded but never confirmed: (re-)POST, 409 is handled
    if synced == target:
        return Action.NONE
    if synced.expires_at < today and target.expires_at < today:
        return Action.NONE
    return Action.UPDATE


def body_hash(body: dict[str, Any]) -> str:
    """Identity of what we sent, to know whether the Router needs a PUT."""
    return hashlib.md5(json.dumps(body, sort_keys=True).encode(), usedforsecurity=False).hexdigest()
