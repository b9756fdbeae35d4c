"""From state DB rows to what the API shows: the card's displayed status, its BadgeView, its QR images.

Pure functions: the routes fetch the rows, these decide.
"""

from __future__ import annotations

import datetime as dt
from functools import lru_cache
from typing import Any

from etl.domain.states import CardStatus
from etl.render.badge_view import BadgeView
from etl.render.qr import QrImages, qr_payload, render_qr
from etl.wallet.apple import PassCard


def display_status(desired_status: str, expires_at: dt.date, today: dt.date) -> str:
    """ACTIVE or INACTIVE as our data says; an ACTIVE card past its expiry reads EXPIRED, as at the Router."""
    if desired_status == CardStatus.ACTIVE and expires_at < today:
        return CardStatus.EXPIRED
    return desired_status


def badge_view(row: Any, university_name: str, qr_base_url: str, today: dt.date) -> BadgeView:
    """``row`` has the columns of etl.api.queries' badge lookups."""
    return BadgeView(
        university_code=row.institution,
        university_name=university_name,
        full_name=f"{row.first_name} {row.last_name}".strip(),
        matricola=row.matricola,
        course_name=row.course_name,
        academic_year=row.academic_year,
        esi=row.esi,
        escn=row.escn,
        card_type=row.card_type,
        issued_at=row.issued_at,
        expires_at=row.expires_at,
        status=display_status(row.desired_status, row.expires_at, today),
        qr_payload=qr_payload(row.escn, qr_base_url),
    )


def pass_card(row: Any, university_name: str, qr_base_url: str, today: dt.date) -> PassCard:
    """What a card's wallet passes show; a retired card's (its career names someone else now):
    voided, with no name."""
    view = badge_view(row, university_name, qr_base_url, today)
    if getattr(row, "retired_at", None) is not None:
        return PassCard(view.escn, view.qr_payload, "-", university_name, view.expires_at,
                        CardStatus.INACTIVE, view.academic_year)  # fmt: skip
    return PassCard(view.escn, view.qr_payload, view.full_name, university_name, view.expires_at,
                    view.status, view.academic_year)  # fmt: skip


def qr_images(
    escn: str, base_url: str, stored_payload: str | None, png: bytes | None, svg: bytes | None
) -> QrImages:
    """The stored images when they encode the current payload; else rendered now (the ``qr_images``
    asset has not run yet for this card, or the configured base URL changed since)."""
    payload = qr_payload(escn, base_url)
    if stored_payload == payload and png and svg:
        return QrImages(payload, bytes(png), bytes(svg))
    return _render(payload)


def qr_png(escn: str, base_url: str, stored_payload: str | None, png: bytes | None) -> bytes:
    """Only the PNG (the feed's inline QR), by the same rule as ``qr_images``."""
    payload = qr_payload(escn, base_url)
    if stored_payload == payload and png:
        return bytes(png)
    return _render(payload).png


@lru_cache(maxsize=4096)
def _render(payload: str) -> QrImages:
    return render_qr(payload)
