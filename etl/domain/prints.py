"""Which cards go on a university's printed badge sheets, and when a sheet must be printed again."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable

from etl.domain.states import CardStatus

PRINTED_CARD_TYPE = "PASSIVE"  # physical badges; virtual ones are SMART_PASSIVE


def printable(card_type: str, desired_status: str, expires_at: dt.date, today: dt.date) -> bool:
    """A physical card that is active and still valid today."""
    return card_type == PRINTED_CARD_TYPE and desired_status == CardStatus.ACTIVE and expires_at >= today


def sheet_digest(cards: Iterable[tuple[str, str, dt.date, str]]) -> str:
    """(ESCN, name, expiry, status) of every card on the sheet: an equal digest means an equal sheet,
    so an unchanged partition is never printed twice."""
    return hashlib.sha256(repr(list(cards)).encode()).hexdigest()[:12]
