"""State DB reads and writes of the REST service other than the per-request hot lookups (those are in
``hot_reads``): exports, downloads' audit rows, the feed. Callers run them in the threadpool."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine, Row, bindparam, select, tuple_, update

from etl.domain.states import ExportStatus, SyncState
from etl.store.models import Card, Career, Export, QrImage

_cards = Card.__table__.c
_careers = Career.__table__.c
_qr = QrImage.__table__.c
_exports = Export.__table__.c

LISTED_EXPORT_STATUSES = (ExportStatus.READY, ExportStatus.REBUILD)

_CAREER_OF_CARD = (_careers.institution == _cards.institution) & (_careers.stu_id == _cards.stu_id)


def list_exports(
    engine: Engine,
    universities: Sequence[str],
    academic_year: int | None,
    since: dt.datetime | None,
    kind: str | None,
    limit: int,
) -> list[Row[Any]]:
    stmt = select(Export.__table__).where(
        _exports.institution.in_(sorted(universities)), _exports.status.in_(LISTED_EXPORT_STATUSES)
    )
    if academic_year is not None:
        stmt = stmt.where(_exports.academic_year == academic_year)
    if since is not None:
        stmt = stmt.where(_exports.created_at > since)
    if kind is not None:
        stmt = stmt.where(_exports.kind == kind)
    stmt = stmt.order_by(_exports.created_at.desc(), _exports.id.desc()).limit(limit)
    with engine.connect() as conn:
        return list(conn.execute(stmt))


def get_export(engine: Engine, export_id: str) -> Row[Any] | None:
    with engine.connect() as conn:
        return conn.execute(select(Export.__table__).where(_exports.id == export_id)).first()


def mark_export_for_rebuild(engine: Engine, export_id: str) -> None:
    """``status='rebuild'``: the next ``export_files`` run rewrites this export's files."""
    with engine.begin() as conn:
        conn.execute(
            update(Export)
            .where(_exports.id == export_id, _exports.status == ExportStatus.READY)
            .values(status=ExportStatus.REBUILD)
        )


def feed_page(
    engine: Engine,
    university: str,
    after: tuple[dt.datetime, str] | None,
    until: dt.datetime,
    limit: int,
    with_images: bool,
) -> list[Row[Any]]:
    """Up to ``limit`` registered cards of ``university`` after ``after`` in (changed_at, escn) order,
    changed no later than ``until``. Keyset paging on ix_cards_feed: each page costs the same however
    deep it is."""
    columns = [
        _cards.escn,
        _cards.esi,
        _cards.academic_year,
        _cards.card_type,
        _cards.issued_at,
        _cards.expires_at,
        _cards.desired_status,
        _cards.changed_at,
        _careers.matricola,
    ]
    source = Card.__table__.outerjoin(Career.__table__, _CAREER_OF_CARD).outerjoin(
        QrImage.__table__, _qr.escn == _cards.escn
    )
    columns += [_qr.payload, _qr.png] if with_images else [_qr.payload]
    stmt = (
        select(*columns)
        .select_from(source)
        .where(
            _cards.institution == university,
            _cards.changed_at <= until,
            _cards.state == SyncState.REGISTERED,
            _cards.deleted_at.is_(None),  # its holder erased: gone from the feed
        )
    )
    if after is not None:
        stmt = stmt.where(
            tuple_(_cards.changed_at, _cards.escn)
            > tuple_(
                bindparam("after_at", after[0], type_=Card.__table__.c.changed_at.type),
                bindparam("after_escn", after[1], type_=Card.__table__.c.escn.type),
            )
        )
    stmt = stmt.order_by(_cards.changed_at, _cards.escn).limit(limit)
    with engine.connect() as conn:
        return list(conn.execute(stmt))
