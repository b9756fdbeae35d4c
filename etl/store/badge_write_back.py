"""State of the write-back onto Esse3 badges: what each badge should carry, what was written."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from sqlalchemy import Connection, bindparam, text

from etl.domain.badges import BadgeWriteBack
from etl.domain.states import SyncState
from etl.store.bulk import Bulk
from etl.store.models import utcnow

_CANDIDATES = text(f"""
SELECT c.bdg_id, c.escn, q.payload, COALESCE(c.router_status, c.desired_status),
       w.escn, w.pending_escn, w.written_hash
FROM cards c
JOIN qr_images q ON q.escn = c.escn
JOIN badges b ON b.institution = c.institution AND b.bdg_id = c.bdg_id AND b.vanished_at IS NULL
LEFT JOIN badge_write_backs w ON w.institution = c.institution AND w.bdg_id = c.bdg_id
WHERE c.institution = :i AND c.academic_year = :y
  AND c.state = '{SyncState.REGISTERED}' AND c.retired_at IS NULL AND c.deleted_at IS NULL
ORDER BY c.bdg_id
""")


def pending(conn: Connection, institution: str, year: int, with_png: bool) -> list[BadgeWriteBack]:
    """Registered cards (with their QR) whose badge does not carry what it should yet; the images
    are read only for those (an unchanged partition reads none)."""
    out = []
    for bdg_id, escn, payload, status, previous, in_flight, written in conn.execute(
        _CANDIDATES, {"i": institution, "y": year}
    ):
        want = BadgeWriteBack(int(bdg_id), escn, payload, status, None, previous, in_flight, with_png)
        if want.digest() != written:
            out.append(want)
    if not with_png or not out:
        return out
    images: dict[str, bytes] = {}
    for start in range(0, len(out), 500):
        escns = [w.escn for w in out[start : start + 500]]
        images.update((escn, bytes(png)) for escn, png in conn.execute(_IMAGES, {"escns": escns}))
    return [replace(w, png=images[w.escn]) for w in out]


_IMAGES = text("SELECT escn, png FROM qr_images WHERE escn IN :escns").bindparams(
    bindparam("escns", expanding=True)
)


def record_intents(conn: Connection, institution: str, wanted: Iterable[BadgeWriteBack]) -> None:
    """Before the Esse3 write: the ESCN each badge is about to get (what was written stays as it was)."""
    Bulk(conn).upsert(
        "badge_write_backs",
        ("institution", "bdg_id", "pending_escn"),
        ("institution", "bdg_id"),
        ((institution, w.bdg_id, w.escn) for w in wanted),
    )


def record_written(conn: Connection, institution: str, written: Iterable[BadgeWriteBack]) -> None:
    """After the Esse3 write: confirmed."""
    now = utcnow()
    Bulk(conn).upsert(
        "badge_write_backs",
        ("institution", "bdg_id", "escn", "pending_escn", "written_hash", "written_at"),
        ("institution", "bdg_id"),
        ((institution, w.bdg_id, w.escn, None, w.digest(), now) for w in written),
        temporal=("written_at",),
    )


def forget(conn: Connection, institution: str, bdg_ids: Iterable[int]) -> None:
    """Badges found not carrying what was written (another ESCN there now, or deleted)."""
    conn.execute(
        text("DELETE FROM badge_write_backs WHERE institution = :i AND bdg_id = :b"),
        [{"i": institution, "b": b} for b in bdg_ids],
    )


def count_written(conn: Connection, institution: str, year: int) -> int:
    """Badges of the partition that carry their card's current ESCN."""
    return int(
        conn.execute(
            text(
                "SELECT COUNT(*) FROM badge_write_backs w JOIN cards c "
                "ON c.institution = w.institution AND c.bdg_id = w.bdg_id AND c.escn = w.escn "
                "WHERE c.institution = :i AND c.academic_year = :y"
            ),
            {"i": institution, "y": year},
        ).scalar_one()
    )
