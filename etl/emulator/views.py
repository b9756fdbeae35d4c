"""JSON views the emulator answers with: PersonView, CardView, public status and Spring pages.

Enums are ``{key, label}`` objects; unset optional fields are ``null`` (as a Spring service renders
them). A person is shown with our organisation's relation only: other organisations' data is theirs.
"""

from __future__ import annotations

import datetime as dt
from typing import Any
from urllib.parse import urlencode

from etl.emulator.contract import (
    ACADEMIC_LEVELS,
    CARD_STATUSES,
    CARD_TYPES,
    IDENTIFIER_CODES,
    PageRequest,
    read_status,
)
from etl.emulator.store import Card, Relation

QR_BASE = "https://s.esc-r.eu/"


def key_label(key: str | None, labels: dict[str, str]) -> dict[str, str] | None:
    return None if key is None else {"key": key, "label": labels.get(key, key)}


def organisation_name(pic: str) -> str:
    return f"Organisation {pic}"


def person_view(r: Relation) -> dict[str, Any]:
    return {
        "identifier": r.identifier,
        "identifierCode": key_label("ESI", IDENTIFIER_CODES),
        "fullName": r.full_name,
        "organisationCount": r.organisation_count,
        "personOrganisationViews": [
            {
                "organisationIdentifier": r.pic,
                "organisationName": organisation_name(r.pic),
                "fullName": r.full_name,
                "email": r.email,
                "academicLevel": key_label(r.academic_level, ACADEMIC_LEVELS),
                "createdAt": r.created_at,
                "modifiedAt": r.modified_at,
            }
        ],
    }


def card_view(c: Card, today: dt.date) -> dict[str, Any]:
    return {
        "cardNumber": c.card_number,
        "cardStatusType": key_label(read_status(c.status, c.expires_at, today), CARD_STATUSES),
        "cardType": key_label(c.card_type, CARD_TYPES),
        "issuedAt": c.issued_at.isoformat(),
        "expiresAt": c.expires_at.isoformat(),
        "issuerIdentifier": c.pic,
        "issuerName": organisation_name(c.pic),
        "personIdentifier": c.person_identifier,
        "displayName": c.display_name,
        "processorIdentifier": c.processor_identifier,
        "createdAt": c.created_at,
        "modifiedAt": c.modified_at,
    }


def status_view(c: Card, today: dt.date) -> dict[str, Any]:
    """The public answer to a QR scan: no personal identifier, only what a verifier needs."""
    return {
        "cardNumber": c.card_number,
        "displayName": c.display_name,
        "expiresAt": c.expires_at.isoformat(),
        "issuedAt": c.issued_at.isoformat(),
        "issuerIdentifier": c.pic,
        "issuerName": organisation_name(c.pic),
        "status": key_label(read_status(c.status, c.expires_at, today), CARD_STATUSES),
    }


def page_view(
    content: list[dict[str, Any]], total: int, req: PageRequest, base_url: str, query: dict[str, str]
) -> dict[str, Any]:
    pages = (total + req.size - 1) // req.size

    def link(rel: str, number: int) -> dict[str, str]:
        q = {**query, "page": str(number), "size": str(req.size)}
        return {"rel": rel, "href": f"{base_url}?{urlencode(q)}"}

    links = [link("self", req.number)]
    if pages:
        links.append(link("first", 0))
        if req.number > 0:
            links.append(link("prev", min(req.number - 1, pages - 1)))
        if req.number + 1 < pages:
            links.append(link("next", req.number + 1))
        links.append(link("last", pages - 1))
    return {
        "content": content,
        "empty": not content,
        "links": links,
        "page": {"number": req.number, "size": req.size, "totalElements": total, "totalPages": pages},
    }


def qr_url(card_number: str) -> str:
    return QR_BASE + card_number
