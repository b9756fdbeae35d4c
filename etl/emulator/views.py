"""JSON views the emulator answers with, in the shapes of the Router's own OpenAPI document
(``esc-router-v2.openapi.json`` beside this module): ``PersonView`` / ``PersonLiteView``,
``CardView`` / ``CardLiteView``, ``CardStatusView``, ``PagedResources…``.

Enums are ``CodeView`` ``{key, label}`` objects except the public status, a plain string. Unset
optional fields are left out (the document types them as strings, not nullable). A person is shown
with our organisation's relation only: other organisations' data is theirs.
"""

from __future__ import annotations

import datetime as dt
from typing import Any
from urllib.parse import urlencode

from etl.domain.router_codes import ACADEMIC_LEVELS, CARD_STATUSES, CARD_TYPES
from etl.emulator.contract import IDENTIFIER_CODES, PageRequest, read_status
from etl.emulator.store import Card, Relation

QR_BASE = "https://s.esc-r.eu/"
_PIC_CODE = {"key": "PIC", "label": "Participant Identification Code"}
_VAT_CODE = {"key": "VAT", "label": "VAT number"}


def code_view(key: str, labels: dict[str, str]) -> dict[str, str]:
    return {"key": key, "label": labels.get(key, key)}


def organisation_name(pic: str) -> str:
    return f"Organisation {pic}"


def organisation_view(pic: str) -> dict[str, Any]:
    """``OrganisationLiteView`` of an institution known by its PIC."""
    name = organisation_name(pic)
    return {
        "id": int(pic),
        "identifier": pic,
        "identifierCode": _PIC_CODE,
        "name": name,
        "fullLabel": f"{pic} - {name}",
    }


def processor_view(vat: str) -> dict[str, Any]:
    return {"identifier": vat, "identifierCode": _VAT_CODE, "name": vat, "fullLabel": vat}


def _relation_view(r: Relation) -> dict[str, Any]:
    """``PersonOrganisationView``: our organisation's relation to the person."""
    view: dict[str, Any] = {"organisation": organisation_view(r.pic), "hasPicture": r.has_picture}
    if r.full_name:
        view["fullName"] = r.full_name
    if r.email is not None:
        view["contactPoint"] = {"email": r.email}
    if r.academic_level is not None:
        view["academicLevel"] = code_view(r.academic_level, ACADEMIC_LEVELS)
    return view


def person_lite_view(r: Relation) -> dict[str, Any]:
    return {"identifier": r.identifier, "organisations": [_relation_view(r)]}


def person_view(r: Relation) -> dict[str, Any]:
    return {
        "identifier": r.identifier,
        "identifierCode": code_view("ESI", IDENTIFIER_CODES),
        "organisationCount": r.organisation_count,
        "organisations": [_relation_view(r)],
    }


def card_lite_view(c: Card) -> dict[str, Any]:
    view: dict[str, Any] = {
        "cardNumber": c.card_number,
        "issuedAt": c.issued_at.isoformat(),
        "expiresAt": c.expires_at.isoformat(),
        "hasOwnerAuthorization": True,  # only the issuer ever sees its cards here
        "issuer": organisation_view(c.pic),
        "person": {"identifier": c.person_identifier},
    }
    if c.display_name is not None:
        view["displayName"] = c.display_name
    if c.processor_identifier is not None:
        view["processor"] = processor_view(c.processor_identifier)
    return view


def card_view(c: Card, today: dt.date) -> dict[str, Any]:
    return {
        **card_lite_view(c),
        "cardStatusType": code_view(read_status(c.status, c.expires_at, today), CARD_STATUSES),
        "cardType": code_view(c.card_type, CARD_TYPES),
    }


def status_view(c: Card, today: dt.date) -> dict[str, Any]:
    """``CardStatusView``, the public answer to a QR scan: no personal identifier, only what a
    verifier needs; ``status`` is a plain string (ACTIVE / INACTIVE / EXPIRED)."""
    view = {
        "cardNumber": c.card_number,
        "expiresAt": c.expires_at.isoformat(),
        "issuedAt": c.issued_at.isoformat(),
        "issuerIdentifier": c.pic,
        "issuerName": organisation_name(c.pic),
        "status": read_status(c.status, c.expires_at, today),
    }
    if c.display_name is not None:
        view["displayName"] = c.display_name
    return view


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
