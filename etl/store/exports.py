"""Queries of the `export_files` asset: the exportable cards of a partition (cards ⋈ careers ⋈
qr_images), their change counts, and the `exports` manifest rows.

A card's *change time* is the later of ``cards.changed_at`` (status, expiry, QR: moved by the cards
and qr_images assets) and ``careers.updated_at`` (name or matricola: moved by the careers asset), so an
incremental export carries every change a vendor can see."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Connection, Select, and_, case, func, insert, select, update
from sqlalchemy.engine import Row

from etl.domain.export_plan import ExportInfo
from etl.domain.states import ExportKind, ExportStatus, SyncState
from etl.store.bulk import refresh_statistics
from etl.store.models import Card, Career, Export, QrImage

if TYPE_CHECKING:
    from etl.exports import ExportFiles

LIVE = (ExportStatus.READY, ExportStatus.REBUILD)  # rows whose files exist, or are about to be replaced


AnySelect = TypeVar("AnySelect", bound=Select[*tuple[Any, ...]])
_change_time = case((Career.updated_at > Card.changed_at, Career.updated_at), else_=Card.changed_at)


def _exportable(stmt: AnySelect, institution: str, academic_year: int) -> AnySelect:
    """``stmt`` FROM cards ⋈ careers ⋈ qr_images WHERE the card is registered in the partition. Inner
    joins: a card without its career or its QR cannot be printed or encoded, so it waits. A retired
    card (its career changed person) is left out: its career now names someone else."""
    return (
        stmt.select_from(Card)
        .join(Career, and_(Career.institution == Card.institution, Career.stu_id == Card.stu_id))
        .join(QrImage, QrImage.escn == Card.escn)
        .where(
            Card.institution == institution,
            Card.academic_year == academic_year,
            Card.state == SyncState.REGISTERED,
            Card.retired_at.is_(None),
            Card.deleted_at.is_(None),  # its holder erased (etl.erasure)
        )
    )


def refresh_planner_stats(conn: Connection) -> list[str]:
    """The tables the export's joins plan on, analysed if stale (right after a bulk load autovacuum
    has not run yet; the planner then expects one row and nests loops: minutes instead of a second)."""
    return refresh_statistics(conn, "cards", "careers", "qr_images", only_stale=True)


def change_counts(
    conn: Connection, institution: str, academic_year: int, since: dt.datetime | None
) -> tuple[int, int, int]:
    """(registered cards, of which exportable — with a career and a QR —, of which changed after ``since``;
    all of them when ``since`` is None)."""
    registered = conn.execute(
        select(func.count()).where(
            Card.institution == institution,
            Card.academic_year == academic_year,
            Card.state == SyncState.REGISTERED,
            Card.retired_at.is_(None),
            Card.deleted_at.is_(None),  # its holder erased (etl.erasure)
        )
    ).scalar_one()
    changed = func.count() if since is None else func.sum(case((_change_time > since, 1), else_=0))
    stmt = _exportable(select(func.count(), changed), institution, academic_year)
    total, n_changed = conn.execute(stmt).one()
    return int(registered), int(total), int(n_changed or 0)


EXPORT_COLUMNS = (
    Card.escn,
    Career.matricola,
    Career.first_name,
    Career.last_name,
    Card.esi,
    Card.card_type,
    Card.issued_at,
    Card.expires_at,
    Card.desired_status,
    QrImage.payload,
    QrImage.png,
    QrImage.svg,
)


def exportable_rows(
    conn: Connection,
    institution: str,
    academic_year: int,
    since: dt.datetime | None,
    until: dt.datetime | None,
    *,
    batch: int = 2000,
) -> Iterator[Row[*tuple[Any, ...]]]:
    """Stream the partition's exportable cards changed in (since, until] (all when ``since`` is None),
    in the order of ``EXPORT_COLUMNS``. Streamed in batches (a server-side cursor on PostgreSQL): the
    images of a whole university never sit in memory."""
    stmt = _exportable(select(*EXPORT_COLUMNS), institution, academic_year)
    if since is not None:
        stmt = stmt.where(_change_time > since)
    if until is not None and since is not None:
        stmt = stmt.where(_change_time <= until)
    yield from conn.execution_options(yield_per=batch).execute(stmt)


def partition_exports(
    conn: Connection, institution: str, academic_year: int, statuses: Sequence[ExportStatus] = LIVE
) -> list[ExportInfo]:
    rows = conn.execute(
        select(
            Export.id,
            Export.kind,
            Export.since,
            Export.until,
            Export.created_at,
            Export.status,
            Export.parquet_path,
            Export.parquet_bytes,
            Export.zip_path,
            Export.zip_bytes,
        )
        .where(
            Export.institution == institution,
            Export.academic_year == academic_year,
            Export.status.in_(statuses),
        )
        .order_by(Export.created_at, Export.id)
    )
    return [
        ExportInfo(**(r._asdict() | {"kind": ExportKind(r.kind), "status": ExportStatus(r.status)}))
        for r in rows
    ]


def export_exists(conn: Connection, export_id: str) -> bool:
    return conn.execute(select(func.count()).where(Export.id == export_id)).scalar_one() > 0


def insert_export(
    conn: Connection,
    files: ExportFiles,
    *,
    institution: str,
    academic_year: int,
    kind: ExportKind,
    since: dt.datetime | None,
    until: dt.datetime,
) -> None:
    """The confirm step (the export's manifest row): called only after both files are in place under
    their final names."""
    conn.execute(
        insert(Export).values(
            id=files.export_id,
            institution=institution,
            academic_year=academic_year,
            kind=kind,
            since=since,
            until=until,
            created_at=until,
            rows=files.parquet.rows,
            parquet_path=str(files.parquet.path),
            parquet_bytes=files.parquet.size_bytes,
            parquet_sha256=files.parquet.sha256,
            zip_path=str(files.zip.path),
            zip_bytes=files.zip.size_bytes,
            zip_sha256=files.zip.sha256,
            status=ExportStatus.READY,
        )
    )


def set_status(
    conn: Connection, ids: Iterable[str], status: ExportStatus, *, only_from: Sequence[ExportStatus] = LIVE
) -> int:
    """Move the given exports to ``status`` (only from ``only_from``, so an expired row never revives)."""
    ids = list(ids)
    if not ids:
        return 0
    result = conn.execute(
        update(Export).where(Export.id.in_(ids), Export.status.in_(only_from)).values(status=status)
    )
    return result.rowcount or 0


def partitions_to_rebuild(conn: Connection) -> list[tuple[str, int]]:
    """(institution, academic_year) of every partition with an export marked ``rebuild``: for a sensor
    that requests `export_files` runs, since the API's mark alone starts nothing."""
    rows = conn.execute(
        select(Export.institution, Export.academic_year)
        .where(Export.status == ExportStatus.REBUILD)
        .distinct()
        .order_by(Export.institution, Export.academic_year)
    )
    return [(inst, year) for inst, year in rows]
