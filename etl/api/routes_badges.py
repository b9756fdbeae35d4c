"""Virtual badges (badges:read) and card QR images (badges:read or exports:read).

A student's badge is their current card: the ACTIVE card of the career with that matricola, else the
latest issued. JSON, HTML and PDF by ``?format=`` or a suffix (``badge.pdf``); the QR as PNG or SVG.
Anything of a university the token does not cover answers exactly like a missing one (404).
Vendors may fetch card QR images too: the feed's ``qr=link`` points at them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from etl.api.auth import Principal, require
from etl.api.context import ApiContext, ctx_of
from etl.api.errors import ApiError, not_found
from etl.api.params import ESCN_PATTERN, MATRICOLA_PATTERN, UNIVERSITY_PATTERN
from etl.api.ranges import etag_matches
from etl.api.schemas import BadgeOut, error_responses
from etl.api.tokens import BADGES_READ, EXPORTS_READ
from etl.render.badge_html import WalletLinks, render_badge_html
from etl.render.badge_pdf import render_badge_pdf
from etl.render.badge_source import badge_view, pass_card, qr_images
from etl.render.qr import QrImages
from etl.wallet.apple import PassCard, build_pkpass, pass_auth_token, pass_json

router = APIRouter(tags=["badges"])
W = TypeVar("W")  # a wallet's signer: Apple's PassSigner, Google's GoogleIssuer

University = Annotated[str, Path(pattern=UNIVERSITY_PATTERN, description="university code")]
Matricola = Annotated[str, Path(pattern=MATRICOLA_PATTERN, description="student number")]
Escn = Annotated[str, Path(pattern=ESCN_PATTERN, description="European Student Card Number")]
BadgeReader = Annotated[Principal, Depends(require(BADGES_READ))]
# Sequential matricole are guessable and every answer names a student: a lower allowance (auth.py).
StudentReader = Annotated[Principal, Depends(require(BADGES_READ, by_matricola=True))]
QrReader = Annotated[Principal, Depends(require(BADGES_READ, EXPORTS_READ))]

PERSONAL = {"Cache-Control": "no-store"}  # badge data is personal: never kept by shared caches
# A QR image only changes with the card number, but the card behind it can be deactivated or deleted:
# clients keep it and revalidate (ETag) rather than show it for an hour after the card is gone.
IMAGE_CACHE = {"Cache-Control": "private, no-cache"}
# The HTML badge is self-contained: forbid scripts and fetches, as its own <meta> CSP does.
HTML_HEADERS = {
    **PERSONAL,
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:",
}  # nosniff: on every answer (etl.api.audit)


class BadgeFormat(StrEnum):
    json = "json"
    html = "html"
    pdf = "pdf"


class QrFormat(StrEnum):
    png = "png"
    svg = "svg"


_BADGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "model": BadgeOut,
        "description": "the badge: JSON, or an HTML page, or a one-page ID-1 PDF",
        "content": {"text/html": {}, "application/pdf": {}},
    },
    **error_responses(401, 403, 404, 422, 429, 503),
}
_QR_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/png": {}, "image/svg+xml": {}}, "description": "the card's QR code"},
    **error_responses(401, 403, 404, 422, 429, 503),
}
_FORMAT_QUERY = Query(description="json (default), html or pdf")


async def _badge_response(ctx: ApiContext, row: Any, fmt: BadgeFormat) -> Response:
    name = ctx.university_names.get(row.institution)
    if name is None:  # a university no longer configured: nothing to show
        raise not_found("card")
    view = badge_view(row, name, ctx.settings.qr_base_url, ctx.today())
    if fmt is BadgeFormat.json:
        body = json.dumps(view.to_json_dict(), ensure_ascii=False).encode("utf-8")
        return Response(body, media_type="application/json", headers=PERSONAL)
    stored = await ctx.reader.qr_by_escn(row.escn)
    images = qr_images(
        row.escn,
        ctx.settings.qr_base_url,
        *((stored.payload, stored.png, stored.svg) if stored else (None,) * 3),
    )
    if fmt is BadgeFormat.html:
        wallets = _wallet_links(ctx, row) if view.is_active else None  # no pass offered for a dead card
        html = render_badge_html(view, images.svg, ctx.logo, wallets)
        return Response(html, media_type="text/html; charset=utf-8", headers=HTML_HEADERS)
    pdf = await run_in_threadpool(render_badge_pdf, view, images.png, ctx.logo_png)
    headers = {**PERSONAL, "Content-Disposition": f'inline; filename="esc-{row.escn}.pdf"'}
    return Response(pdf, media_type="application/pdf", headers=headers)


def _qr_response(request: Request, images: QrImages, fmt: QrFormat) -> Response:
    body, media = (images.png, "image/png") if fmt is QrFormat.png else (images.svg, "image/svg+xml")
    etag = '"' + hashlib.blake2b(body, digest_size=16).hexdigest() + '"'
    headers = {**IMAGE_CACHE, "ETag": etag}
    if etag_matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=media, headers=headers)


async def visible_card(ctx: ApiContext, principal: Principal, escn: str) -> Any:
    """The card's badge row, or the 404 of a missing card (also for another university's)."""
    row = await ctx.reader.card_by_escn(escn)
    if row is None or not principal.sees(row.institution):
        raise not_found("card")
    return row


async def students_card(ctx: ApiContext, principal: Principal, university: str, matricola: str) -> Any:
    """The student's current card's badge row, or the 404 of a missing student."""
    if not principal.sees(university):
        raise not_found("student")
    row = await ctx.reader.card_by_matricola(university, matricola)
    if row is None:
        raise not_found("student")
    return row


async def student_badge(
    request: Request, principal: Principal, university: str, matricola: str, fmt: BadgeFormat
) -> Response:
    ctx = ctx_of(request)
    return await _badge_response(ctx, await students_card(ctx, principal, university, matricola), fmt)


async def card_badge(request: Request, principal: Principal, escn: str, fmt: BadgeFormat) -> Response:
    ctx = ctx_of(request)
    return await _badge_response(ctx, await visible_card(ctx, principal, escn), fmt)


# Registration order is matching order: the hottest routes first.
@router.get(
    "/v1/cards/{escn}/qr.{image}",
    response_class=Response,
    responses=_QR_RESPONSES,
    summary="A card's QR code (PNG or SVG); for badge readers and vendors",
)
async def card_qr_route(request: Request, principal: QrReader, escn: Escn, image: QrFormat) -> Response:
    ctx = ctx_of(request)
    row = await ctx.reader.qr_by_escn(escn)
    if row is None or not principal.sees(row.institution):
        raise not_found("card")
    return _qr_response(
        request, qr_images(escn, ctx.settings.qr_base_url, row.payload, row.png, row.svg), image
    )


@router.get(
    "/v1/cards/{escn}/badge",
    response_model=BadgeOut,
    responses=_BADGE_RESPONSES,
    summary="The virtual badge of a card",
)
async def card_badge_route(
    request: Request,
    principal: BadgeReader,
    escn: Escn,
    format: Annotated[BadgeFormat, _FORMAT_QUERY] = BadgeFormat.json,
) -> Response:
    return await card_badge(request, principal, escn, format)


@router.get(
    "/v1/cards/{escn}/badge.{format}",
    response_model=BadgeOut,
    responses=_BADGE_RESPONSES,
    summary="The virtual badge of a card, format by suffix (.json, .html, .pdf)",
)
async def card_badge_suffix_route(
    request: Request,
    principal: BadgeReader,
    escn: Escn,
    format: BadgeFormat,
) -> Response:
    return await card_badge(request, principal, escn, format)


@router.get(
    "/v1/universities/{university}/students/{matricola}/badge",
    response_model=BadgeOut,
    responses=_BADGE_RESPONSES,
    summary="A student's virtual badge (their current card)",
)
async def student_badge_route(
    request: Request,
    principal: StudentReader,
    university: University,
    matricola: Matricola,
    format: Annotated[BadgeFormat, _FORMAT_QUERY] = BadgeFormat.json,
) -> Response:
    return await student_badge(request, principal, university, matricola, format)


@router.get(
    "/v1/universities/{university}/students/{matricola}/badge.{format}",
    response_model=BadgeOut,
    responses=_BADGE_RESPONSES,
    summary="A student's virtual badge, format by suffix (.json, .html, .pdf)",
)
async def student_badge_suffix_route(
    request: Request,
    principal: StudentReader,
    university: University,
    matricola: Matricola,
    format: BadgeFormat,
) -> Response:
    return await student_badge(request, principal, university, matricola, format)


@router.get(
    "/v1/universities/{university}/students/{matricola}/qr.{image}",
    response_class=Response,
    responses=_QR_RESPONSES,
    summary="The QR code of a student's current card (PNG or SVG)",
)
async def student_qr_route(
    request: Request, principal: StudentReader, university: University, matricola: Matricola, image: QrFormat
) -> Response:
    ctx = ctx_of(request)
    if not principal.sees(university):
        raise not_found("student")
    row = await ctx.reader.qr_by_matricola(university, matricola)
    if row is None:
        raise not_found("student")
    return _qr_response(
        request, qr_images(row.escn, ctx.settings.qr_base_url, row.payload, row.png, row.svg), image
    )


# --- Apple Wallet ---------------------------------------------------------------------------------

PKPASS = "application/vnd.apple.pkpass"
_PASS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {PKPASS: {}}, "description": "the card as a signed Apple Wallet pass"},
    **error_responses(401, 403, 404, 422, 429, 503),
}


def wallet_card(ctx: ApiContext, row: Any, issuers: Mapping[str, W], wallet: str) -> tuple[W, PassCard]:
    """The university's signer for ``wallet`` and what its pass shows of the card; a 404 when the
    university issues no such pass."""
    issuer = issuers.get(row.institution)
    name = ctx.university_names.get(row.institution)
    if issuer is None or name is None:
        raise ApiError(404, "wallet_not_configured", f"this university issues no {wallet} pass")
    return issuer, pass_card(row, name, ctx.settings.qr_base_url, ctx.today())


def _wallet_links(ctx: ApiContext, row: Any) -> WalletLinks:
    """The badge page's wallet buttons: the pass route beside the page, the signed Google link."""
    save_url = None
    if row.institution in ctx.google_issuers:
        issuer, card = wallet_card(ctx, row, ctx.google_issuers, "Google Wallet")
        save_url = issuer.save_url(card, row.institution)
    return WalletLinks("pass.pkpass" if row.institution in ctx.wallet_signers else None, save_url)


async def pass_response(ctx: ApiContext, row: Any) -> Response:
    signer, card = wallet_card(ctx, row, ctx.wallet_signers, "Apple Wallet")
    service: dict[str, str] = {}
    if ctx.wallet_secret is not None:  # devices fetch the pass again when the card changes
        token = pass_auth_token(ctx.wallet_secret, signer.pass_type_identifier, row.escn)
        service = {"authentication_token": token, "web_service_url": f"{ctx.public_url}apple/"}
    body = await run_in_threadpool(build_pkpass, pass_json(card, signer, **service), ctx.pass_images, signer)
    headers = {**PERSONAL, "Content-Disposition": f'attachment; filename="esc-{row.escn}.pkpass"'}
    return Response(body, media_type=PKPASS, headers=headers)


@router.get(
    "/v1/cards/{escn}/pass.pkpass",
    response_class=Response,
    responses=_PASS_RESPONSES,
    summary="The card as an Apple Wallet pass (its ESC QR; voided once the card is not ACTIVE)",
)
async def card_pass_route(request: Request, principal: BadgeReader, escn: Escn) -> Response:
    ctx = ctx_of(request)
    return await pass_response(ctx, await visible_card(ctx, principal, escn))


@router.get(
    "/v1/universities/{university}/students/{matricola}/pass.pkpass",
    response_class=Response,
    responses=_PASS_RESPONSES,
    summary="A student's current card as an Apple Wallet pass",
)
async def student_pass_route(
    request: Request, principal: StudentReader, university: University, matricola: Matricola
) -> Response:
    ctx = ctx_of(request)
    return await pass_response(ctx, await students_card(ctx, principal, university, matricola))


# --- Google Wallet ------------------------------------------------------------------------------------

_SAVE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": '`{"save_url": "https://pay.google.com/gp/v/save/<JWT>"}`: the button\'s link'},
    **error_responses(401, 403, 404, 422, 429, 503),
}


def save_link_response(ctx: ApiContext, row: Any) -> Response:
    issuer, card = wallet_card(ctx, row, ctx.google_issuers, "Google Wallet")
    body = json.dumps({"save_url": issuer.save_url(card, row.institution)})
    return Response(body, media_type="application/json", headers=PERSONAL)


@router.get(
    "/v1/cards/{escn}/google-wallet",
    response_class=Response,
    responses=_SAVE_RESPONSES,
    summary='The card\'s "Save to Google Wallet" link (a signed JWT with the pass object)',
)
async def card_google_route(request: Request, principal: BadgeReader, escn: Escn) -> Response:
    ctx = ctx_of(request)
    return save_link_response(ctx, await visible_card(ctx, principal, escn))


@router.get(
    "/v1/universities/{university}/students/{matricola}/google-wallet",
    response_class=Response,
    responses=_SAVE_RESPONSES,
    summary="A student's current card's \"Save to Google Wallet\" link",
)
async def student_google_route(
    request: Request, principal: StudentReader, university: University, matricola: Matricola
) -> Response:
    ctx = ctx_of(request)
    return save_link_response(ctx, await students_card(ctx, principal, university, matricola))


# Lookups of one card or student: their answers feed the not-found watch (etl.api.throttles).
LOOKUP_ROUTES = frozenset(route.name for route in router.routes if hasattr(route, "name"))
