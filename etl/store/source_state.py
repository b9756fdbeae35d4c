"""What the state DB keeps about Esse3's completeness: the sweep's findings, the mass-deletion guard's
holds, and the moves a change of academic year or career makes to badges, cards and QR images."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from sqlalchemy import Connection, bindparam, delete, func, insert, select, text, update

from etl.domain.source_drift import DriftKind, PartitionDrift
from etl.domain.states import ExportStatus
from etl.store.models import Export, SourceFinding, VanishHold, utcnow


def findings(conn: Connection, institution: str, academic_year: int, table: str) -> dict[int, DriftKind]:
    rows = conn.execute(
        select(SourceFinding.source_key, SourceFinding.kind).where(
            SourceFinding.institution == institution,
            SourceFinding.academic_year == academic_year,
            SourceFinding.source_table == table,
        )
    )
    return {key: DriftKind(kind) for key, kind in rows}


def record_findings(
    conn: Connection, institution: str, academic_year: int, table: str, drift: PartitionDrift
) -> None:
    """The sweep's drift of one partition, for its next run (a newer finding of a key replaces one)."""
    rows = [
        (key, kind)
        for kind, keys in (
            (DriftKind.MISSING, drift.missing),
            (DriftKind.CHANGED, drift.changed),
            (DriftKind.VANISHED, drift.vanished),
        )
        for key in keys
    ]
    if not rows:
        return
    clear_findings(conn, institution, table, [k for k, _ in rows])
    now = utcnow()
    conn.execute(
        insert(SourceFinding),
        [
            {
                "institution": institution,
                "source_table": table,
                "source_key": key,
                "academic_year": academic_year,
                "kind": kind,
                "found_at": now,
            }
            for key, kind in rows
        ],
    )


def clear_findings(conn: Connection, institution: str, table: str, keys: Iterable[int]) -> None:
    keys = list(keys)
    for start in range(0, len(keys), 500):
        conn.execute(
            delete(SourceFinding).where(
                SourceFinding.institution == institution,
                SourceFinding.source_table == table,
                SourceFinding.source_key.in_(keys[start : start + 500]),
            )
        )


def findings_by_partition(conn: Connection) -> list[tuple[str, int, dt.datetime]]:
    """(institution, academic year, newest finding) of every partition with findings to carry out."""
    rows = conn.execute(
        select(SourceFinding.institution, SourceFinding.academic_year, func.max(SourceFinding.found_at))
        .group_by(SourceFinding.institution, SourceFinding.academic_year)
        .order_by(SourceFinding.institution, SourceFinding.academic_year)
    )
    return [(i, y, at) for i, y, at in rows]


def count_findings(conn: Connection, institution: str) -> dict[str, int]:
    """Findings not yet carried out, per kind."""
    rows = conn.execute(
        text("SELECT kind, COUNT(*) FROM source_findings WHERE institution = :i GROUP BY kind"),
        {"i": institution},
    )
    return {kind: n for kind, n in rows}


class Hold(NamedTuple):
    partition_key: str
    source_table: str
    vanished: int
    total: int
    reason: str
    confirmed_at: dt.datetime | None

    @property
    def confirmed(self) -> bool:
        return self.confirmed_at is not None


_HOLD_COLUMNS = (
    VanishHold.partition_key,
    VanishHold.source_table,
    VanishHold.vanished,
    VanishHold.total,
    VanishHold.reason,
    VanishHold.confirmed_at,
)


def get_hold(conn: Connection, partition_key: str, table: str) -> Hold | None:
    row = conn.execute(
        select(*_HOLD_COLUMNS).where(
            VanishHold.partition_key == partition_key, VanishHold.source_table == table
        )
    ).first()
    return None if row is None else Hold(*row)


def hold(
    conn: Connection, institution: str, partition_key: str, table: str, vanished: int, total: int, reason: str
) -> None:
    """Record (or refresh) a held mass deletion; a confirmation of a different count is withdrawn."""
    current = get_hold(conn, partition_key, table)
    values = {"vanished": vanished, "total": total, "reason": reason}
    if current is None:
        conn.execute(
            insert(VanishHold).values(
                partition_key=partition_key,
                source_table=table,
                institution=institution,
                held_at=utcnow(),
                **values,
            )
        )
        return
    same = (current.vanished, current.total) == (vanished, total)
    conn.execute(
        update(VanishHold)
        .where(VanishHold.partition_key == partition_key, VanishHold.source_table == table)
        .values(**values, **({} if same else {"confirmed_at": None, "held_at": utcnow()}))
    )


def release_hold(conn: Connection, partition_key: str, table: str) -> None:
    conn.execute(
        delete(VanishHold).where(VanishHold.partition_key == partition_key, VanishHold.source_table == table)
    )


def holds(conn: Connection, institution: str | None = None) -> list[Hold]:
    query = select(*_HOLD_COLUMNS).order_by(VanishHold.partition_key, VanishHold.source_table)
    if institution is not None:
        query = query.where(VanishHold.institution == institution)
    return [Hold(*r) for r in conn.execute(query)]


def confirm_holds(conn: Connection, institution: str) -> list[Hold]:
    """A person looked: the university's held deletions are applied by their partitions' next runs."""
    conn.execute(
        update(VanishHold)
        .where(VanishHold.institution == institution, VanishHold.confirmed_at.is_(None))
        .values(confirmed_at=utcnow())
    )
    return holds(conn, institution)


def move_careers(conn: Connection, institution: str, academic_year: int, stu_ids: Sequence[int]) -> set[int]:
    """Careers that moved to ``academic_year``: their badges, cards and QR images follow them (one
    partition holds a card, never two). Returns the academic years they left, whose exports are marked
    for rebuild (a full export without the cards that left)."""
    if not stu_ids:
        return set()
    params = {"i": institution, "y": academic_year, "ids": list(stu_ids)}
    left = set(
        conn.execute(
            text(
                "SELECT DISTINCT academic_year FROM badges WHERE institution = :i AND stu_id IN :ids "
                "AND academic_year <> :y"
            ).bindparams(bindparam("ids", expanding=True)),
            params,
        ).scalars()
    )
    conn.execute(
        text("UPDATE badges SET academic_year = :y WHERE institution = :i AND stu_id IN :ids").bindparams(
            bindparam("ids", expanding=True)
        ),
        params,
    )
    _move_cards(conn, institution, academic_year, "stu_id", stu_ids)
    mark_exports_for_rebuild(conn, institution, left)
    return left


def move_badges(conn: Connection, institution: str, academic_year: int, bdg_ids: Sequence[int]) -> set[int]:
    """Badges that now belong to a career of ``academic_year``: their cards and QR images follow."""
    if not bdg_ids:
        return set()
    left = set(
        conn.execute(
            text(
                "SELECT DISTINCT academic_year FROM cards WHERE institution = :i AND bdg_id IN :ids "
                "AND academic_year <> :y"
            ).bindparams(bindparam("ids", expanding=True)),
            {"i": institution, "y": academic_year, "ids": list(bdg_ids)},
        ).scalars()
    )
    _move_cards(conn, institution, academic_year, "bdg_id", bdg_ids)
    mark_exports_for_rebuild(conn, institution, left)
    return left


def _move_cards(conn: Connection, institution: str, academic_year: int, by: str, keys: Sequence[int]) -> None:
    params = {"i": institution, "y": academic_year, "ids": list(keys), "now": utcnow()}
    conn.execute(
        text(
            "UPDATE qr_images SET academic_year = :y WHERE escn IN ("
            f"SELECT escn FROM cards WHERE institution = :i AND {by} IN :ids AND academic_year <> :y)"
        ).bindparams(bindparam("ids", expanding=True)),
        params,
    )
    conn.execute(
        text(
            "UPDATE cards SET academic_year = :y, changed_at = :now "
            f"WHERE institution = :i AND {by} IN :ids AND academic_year <> :y"
        ).bindparams(bindparam("ids", expanding=True)),
        params,
    )


def mark_exports_for_rebuild(conn: Connection, institution: str, academic_years: Iterable[int]) -> None:
    """The partitions' ready exports hold cards they no longer have: the next export of each is a full
    one that supersedes them (etl.assets.exports)."""
    years = list(academic_years)
    if years:
        conn.execute(
            update(Export)
            .where(
                Export.institution == institution,
                Export.academic_year.in_(years),
                Export.status == ExportStatus.READY,
            )
            .values(status=ExportStatus.REBUILD)
        )


def exports_to_rebuild(conn: Connection) -> list[tuple[str, int, str]]:
    """(institution, academic year, newest export id) of every partition with an export to rebuild."""
    rows = conn.execute(
        select(Export.institution, Export.academic_year, func.max(Export.id))
        .where(Export.status == ExportStatus.REBUILD)
        .group_by(Export.institution, Export.academic_year)
        .order_by(Export.institution, Export.academic_year)
    )
    return [(i, y, e) for i, y, e in rows]


def touch_cards(conn: Connection, institution: str, stu_ids: Sequence[int]) -> None:
    """What a vendor sees of these careers' cards changed (a name, a matricola, a course): the cards
    move in the feed."""
    if stu_ids:
        conn.execute(
            text("UPDATE cards SET changed_at = :now WHERE institution = :i AND stu_id IN :ids").bindparams(
                bindparam("ids", expanding=True)
            ),
            {"now": utcnow(), "i": institution, "ids": list(stu_ids)},
        )
