"""Queries of the `qr_images` asset: which registered cards need a (new) QR symbol, and its upsert.

A stored symbol is current when its payload is exactly ``<base URL><ESCN>``: comparing the payload (not
a render date or a renderer version) is what makes re-rendering happen only when the ESCN or the base
changes."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Date,
    Row,
    String,
    and_,
    bindparam,
    cast,
    delete,
    exists,
    func,
    or_,
    select,
    text,
    update,
)

from etl.domain.prints import PRINTED_CARD_TYPE
from etl.domain.states import CardStatus, SyncState
from etl.store.bulk import Bulk
from etl.store.models import Card, QrImage

QR_COLUMNS = ("escn", "institution", "academic_year", "payload", "png", "svg", "rendered_at")


def _current(base_url: str) -> ColumnElement[bool]:
    """SQL condition: the card's stored symbol carries ``base_url || escn``. The CAST gives PostgreSQL
    the parameter's type, which it cannot infer across ``||``."""
    return QrImage.payload == cast(bindparam("base", base_url), String) + Card.escn


def _registered(institution: str, academic_year: int) -> ColumnElement[bool]:
    return and_(
        Card.institution == institution,
        Card.academic_year == academic_year,
        Card.state == SyncState.REGISTERED,  # a pending card gets no QR
        Card.deleted_at.is_(None),  # nor one deleted at the Router (its holder erased)
    )


def stale_escns(conn: Connection, institution: str, academic_year: int, base_url: str) -> list[str]:
    """ESCNs of the partition's registered cards whose QR is missing or carries another payload,
    sorted. Only the ESCNs are held (~100 bytes each), never the images."""
    rows = conn.execute(
        select(Card.escn)
        .outerjoin(QrImage, QrImage.escn == Card.escn)
        .where(_registered(institution, academic_year), or_(QrImage.escn.is_(None), ~_current(base_url)))
        .order_by(Card.escn)
    )
    return list(rows.scalars())


def qr_counts(conn: Connection, institution: str, academic_year: int, base_url: str) -> tuple[int, int]:
    """(registered cards of the partition, of which with a current QR)."""
    row = conn.execute(
        select(func.count(Card.escn), func.count(QrImage.escn))
        .outerjoin(QrImage, and_(QrImage.escn == Card.escn, _current(base_url)))
        .where(_registered(institution, academic_year))
    ).one()
    return int(row[0]), int(row[1])


def upsert_images(
    conn: Connection,
    institution: str,
    academic_year: int,
    images: Sequence[tuple[str, str, bytes, bytes]],
    now: dt.datetime,
) -> None:
    """Insert or replace the (escn, payload, png, svg) symbols, and move their cards' ``changed_at`` so
    the REST feed, ordered by it, and the next incremental export carry the new image."""
    Bulk(conn).upsert(
        "qr_images",
        QR_COLUMNS,
        ("escn",),
        ((escn, institution, academic_year, payload, png, svg, now) for escn, payload, png, svg in images),
        temporal=("rendered_at",),
    )
    escns = [i[0] for i in images]
    if escns:
        conn.execute(update(Card).where(Card.escn.in_(escns)).values(changed_at=now))


def delete_orphans(conn: Connection, institution: str, academic_year: int) -> int:
    """Drop the partition's symbols whose card row no longer exists (e.g. a re-minted ESCN)."""
    result = conn.execute(
        delete(QrImage).where(
            QrImage.institution == institution,
            QrImage.academic_year == academic_year,
            ~exists(select(Card.escn).where(Card.escn == QrImage.escn)),
        )
    )
    return result.rowcount or 0


# Registered physical active cards with their career and QR, in print order (etl.domain.prints decides).
_PRINT_CANDIDATES = text(f"""
SELECT k.escn, k.institution, k.esi, k.card_type, k.issued_at, k.expires_at, k.desired_status,
       c.matricola, c.first_name, c.last_name, c.course_name, c.academic_year,
       q.payload, q.png, q.svg
FROM cards k
JOIN careers c ON c.institution = k.institution AND c.stu_id = k.stu_id
LEFT JOIN qr_images q ON q.escn = k.escn
WHERE k.institution = :i AND k.academic_year = :y AND k.state = '{SyncState.REGISTERED}'
  AND k.deleted_at IS NULL AND k.card_type = :printed AND k.desired_status = :active
ORDER BY c.last_name, c.first_name, k.escn
""").columns(issued_at=Date, expires_at=Date)


def print_candidates(conn: Connection, institution: str, academic_year: int) -> list[Row[Any]]:
    params = {"i": institution, "y": academic_year, "printed": PRINTED_CARD_TYPE, "active": CardStatus.ACTIVE}
    return list(conn.execute(_PRINT_CANDIDATES, params))
