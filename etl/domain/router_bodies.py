"""Request bodies of the ESC Router v2 (``PersonUpdateView``, ``CardUpdateView``) as pure functions.

Unset fields are omitted, never sent as null. Bad input raises ``ValueError`` (or ``TypeError`` for a
wrong type) naming the field but never quoting names or e-mails, so messages are safe to log and to
store as quarantine reasons.
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from typing import Any

from etl.domain.esi import ESI_PREFIX
from etl.domain.router_codes import ACADEMIC_LEVELS, CARD_TYPES, WRITABLE_CARD_STATUSES

MAX_STRING = 255

_PIC = re.compile(r"^[0-9]{9}$")
_ESCN = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-1[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9]{12}$")


def person_body(esi: str, pic: str, full_name: str, email: str | None, academic_level: str) -> dict[str, Any]:
    _check_esi(esi)
    _check_pic(pic)
    relation: dict[str, Any] = {
        "organisationIdentifier": pic,
        "fullName": _text("full_name", full_name),
    }
    if email is not None:
        relation["email"] = _text("email", email)
        if "@" not in email:
            raise ValueError("email: not an e-mail address")
    if academic_level not in ACADEMIC_LEVELS:
        raise ValueError(f"academic_level: {academic_level!r} is not one of {', '.join(ACADEMIC_LEVELS)}")
    relation["academicLevel"] = academic_level
    return {"identifier": esi, "identifierCode": "ESI", "personOrganisationUpdateViews": [relation]}


def card_body(
    escn: str | None,
    esi: str,
    pic: str,
    card_type: str,
    status: str,
    issued_at: dt.date,
    expires_at: dt.date,
    display_name: str | None = None,
) -> dict[str, Any]:
    """``escn=None`` omits ``cardNumber`` (the Router mints one); the project normally mints offline."""
    _check_esi(esi)
    _check_pic(pic)
    if card_type not in CARD_TYPES:
        raise ValueError(f"card_type: {card_type!r} is not one of {', '.join(CARD_TYPES)}")
    if status not in WRITABLE_CARD_STATUSES:
        raise ValueError(f"status: {status!r} is not one of {', '.join(WRITABLE_CARD_STATUSES)}")
    issued, expires = _date("issued_at", issued_at), _date("expires_at", expires_at)
    if expires_at < issued_at:
        raise ValueError(f"expires_at {expires} is before issued_at {issued}")
    body: dict[str, Any] = {}
    if escn is not None:
        if not isinstance(escn, str) or not _ESCN.match(escn):
            raise ValueError(f"escn: {escn!r} is not a lower-case version-1 ESCN")
        if escn[-9:] != pic:
            raise ValueError(f"escn: {escn} does not end with the issuer PIC {pic}")
        body["cardNumber"] = escn
    body |= {
        "cardStatusType": status,
        "cardType": card_type,
        "issuedAt": issued,
        "expiresAt": expires,
        "issuerIdentifier": pic,
        "personIdentifier": esi,
    }
    if display_name is not None:
        body["displayName"] = _text("display_name", display_name)
    return body


def card_update_body(create_body: dict[str, Any]) -> dict[str, Any]:
    """The PUT body of a card: its POST body without ``cardNumber`` ("POST ONLY" in the Router's
    document; a PUT names the card in its path)."""
    return {k: v for k, v in create_body.items() if k != "cardNumber"}


def _check_esi(esi: str) -> None:
    if not isinstance(esi, str):
        raise TypeError(f"esi: expected str, got {type(esi).__name__}")
    if not esi.lower().startswith(ESI_PREFIX.lower()) or len(esi) <= len(ESI_PREFIX):
        raise ValueError(f"esi: {esi!r} does not start with {ESI_PREFIX}")
    if len(esi) > MAX_STRING:
        raise ValueError(f"esi: longer than {MAX_STRING} characters")


def _check_pic(pic: str) -> None:
    if not isinstance(pic, str) or not _PIC.match(pic):
        raise ValueError(f"pic: {pic!r} is not 9 digits")


def _text(field: str, value: str) -> str:
    """The value in Unicode NFC (the Router's form for names and e-mails: a decomposed accent is the
    same name). Never quote the value in an error: these fields hold personal data."""
    if not isinstance(value, str):
        raise TypeError(f"{field}: expected str, got {type(value).__name__}")
    value = unicodedata.normalize("NFC", value)
    if not value.strip():
        raise ValueError(f"{field}: empty")
    if len(value) > MAX_STRING:
        raise ValueError(f"{field}: longer than {MAX_STRING} characters ({len(value)})")
    return value


def _date(field: str, value: dt.date) -> str:
    # A datetime is a date subclass whose isoformat() carries a time (and maybe a zone): refuse it.
    if isinstance(value, dt.datetime) or not isinstance(value, dt.date):
        raise TypeError(f"{field}: expected a datetime.date, got {type(value).__name__}")
    return f"{value.year:04d}-{value.month:02d}-{value.day:02d}"
