"""Reading the Router's answers in the shapes of its OpenAPI document (``CardView``, ``PersonView``).

Pure and defensive: a field missing or of the wrong type reads as None, never raises, so an answer we
do not understand can only make a card "not ours", never attach it to the wrong person.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from etl.domain.esi import same_esi
from etl.domain.states import CardStatus


def _get(obj: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _date(value: Any) -> dt.date | None:
    try:
        return dt.date.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None


@dataclass(frozen=True)
class RouterCard:
    """What a ``CardView`` says about a card: ``issuer.identifier`` (PIC), ``person.identifier``
    (ESI), ``cardStatusType.key`` (ACTIVE / INACTIVE / EXPIRED) and the dates."""

    number: str | None
    issuer_pic: str | None
    person_esi: str | None
    status: str | None
    expires_at: dt.date | None

    def is_ours(self, pic: str, esi: str) -> bool:
        """Issued by our PIC to this person (the ESI prefix compared case-insensitively)."""
        return self.issuer_pic == pic and self.person_esi is not None and same_esi(self.person_esi, esi)

    def expired(self, today: dt.date) -> bool:
        return self.status == CardStatus.EXPIRED or (self.expires_at is not None and self.expires_at < today)


def read_card(view: Any) -> RouterCard:
    issuer = _get(view, "issuer", "identifier")
    return RouterCard(
        number=_text(_get(view, "cardNumber")),
        # The document's example shows the PIC as a number: accept both.
        issuer_pic=str(issuer) if isinstance(issuer, str | int) and not isinstance(issuer, bool) else None,
        person_esi=_text(_get(view, "person", "identifier")),
        status=_text(_get(view, "cardStatusType", "key")),
        expires_at=_date(_get(view, "expiresAt")),
    )


def person_identifier(view: Any) -> str | None:
    """``PersonView.identifier``: the ESI the Router holds."""
    return _text(_get(view, "identifier"))


def has_relation(view: Any, pic: str) -> bool:
    """Whether ``PersonView.organisations`` holds our organisation's relation."""
    organisations = _get(view, "organisations")
    if not isinstance(organisations, list):
        return False
    return any(str(_get(o, "organisation", "identifier")) == pic for o in organisations)
