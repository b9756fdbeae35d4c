"""Badges in the state DB as last read from Esse3, and what follows a badge that changes career."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Boolean, Connection, Date, DateTime, bindparam, text

from etl.domain.badges import ReadBadge, StoredBadge
from etl.store.bulk import Bulk
from etl.store.models import utcnow

BADGE_COLUMNS = (
    "institution",
    "bdg_id",
    "stu_id",
    "pers_id",
    "academic_year",
    "valid_from",
    "valid_to",
    "annulled",
    "printed_on",
    "kind",
    "source_data_mod",
    "source_digest",
    "vanished_at",  # always cleared: the row is in Esse3
    "updated_at",
)


def existing_badges(conn: Connection, institution: str, bdg_ids: Sequence[int]) -> dict[int, StoredBadge]:
    rows = conn.execute(
        text(
            "SELECT bdg_id, stu_id, academic_year, source_digest, vanished_at, pers_id, valid_from, "
            "valid_to, annulled, printed_on, kind FROM badges WHERE institution = :i AND bdg_id IN :ids"
        )
        .bindparams(bindparam("ids", expanding=True))
        .columns(valid_from=Date, valid_to=Date, printed_on=Date, annulled=Boolean, vanished_at=DateTime),
        {"i": institution, "ids": list(bdg_ids)},
    )
    return {
        r[0]: StoredBadge(
            r[1], r[2], r[3], r[4] is not None, (r[1], r[5], r[2], r[6], r[7], r[8], r[9], r[10])
        )
        for r in rows
    }


def badges_of_vanished_careers(conn: Connection, institution: str, bdg_ids: Sequence[int]) -> set[int]:
    if not bdg_ids:
        return set()
    rows = conn.execute(
        text(
            "SELECT b.bdg_id FROM badges b JOIN careers c ON c.institution = b.institution "
            "AND c.stu_id = b.stu_id WHERE b.institution = :i AND b.bdg_id IN :ids "
            "AND c.vanished_at IS NOT NULL"
        ).bindparams(bindparam("ids", expanding=True)),
        {"i": institution, "ids": list(bdg_ids)},
    )
    return set(rows.scalars())


def upsert_badges(conn: Connection, institution: str, badges: Sequence[ReadBadge]) -> None:
    now = utcnow()
    Bulk(conn).upsert(
        "badges",
        BADGE_COLUMNS,
        ("institution", "bdg_id"),
        (
            (
                institution,
                b.bdg_id,
                b.stu_id,
                b.pers_id,
                b.academic_year,
                b.valid_from,
                b.valid_to,
                b.annulled,
                b.printed_on,
                b.kind,
                b.data_mod,
                b.digest,
                None,
                now,
            )
            for b in badges
        ),
        temporal=("valid_from", "valid_to", "printed_on", "source_data_mod", "vanished_at", "updated_at"),
    )


def follow_badge_careers(conn: Connection, institution: str, moved: Sequence[tuple[int, int]]) -> None:
    """(bdg_id, stu_id) of badges now on another career: their current cards follow when that career
    is the same person's (a card of another person stays where it was and is retired by `esc_cards`)."""
    if moved:
        conn.execute(
            text(
                "UPDATE cards SET stu_id = :s WHERE institution = :i AND bdg_id = :b AND retired_at IS NULL "
                "AND EXISTS (SELECT 1 FROM careers c JOIN persons p ON p.institution = c.institution "
                "AND p.pers_id = c.pers_id WHERE c.institution = :i AND c.stu_id = :s AND p.esi = cards.esi)"
            ),
            [{"i": institution, "b": b, "s": s} for b, s in moved],
        )


def count_badges(conn: Connection, institution: str, year: int) -> int:
    return int(
        conn.execute(
            text("SELECT COUNT(*) FROM badges WHERE institution = :i AND academic_year = :y"),
            {"i": institution, "y": year},
        ).scalar_one()
    )
