"""When a partition gets a full export, an incremental one or none, and which exports retention expires
(pure: the `export_files` asset carries the plan out; rules in its module docstring)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from etl.domain.export_policy import ExportPolicy
from etl.domain.states import ExportKind, ExportStatus


@dataclass(frozen=True, slots=True)
class ExportInfo:
    """The manifest row of one export, as the planning rules need it."""

    id: str
    kind: ExportKind
    since: dt.datetime | None
    until: dt.datetime
    created_at: dt.datetime
    status: ExportStatus
    parquet_path: str = ""
    parquet_bytes: int = 0
    zip_path: str = ""
    zip_bytes: int = 0


@dataclass(frozen=True)
class ExportPlan:
    kind: ExportKind | None  # None: nothing to write
    since: dt.datetime | None
    reason: str
    supersedes: tuple[str, ...] = ()  # rebuild rows the new full replaces


def chain_since(live: Sequence[ExportInfo]) -> dt.datetime | None:
    """Where the next incremental starts: the newest ready export's ``until`` (None: no export yet)."""
    return max((e.until for e in live if e.status == ExportStatus.READY), default=None)


def plan_export(
    live: Sequence[ExportInfo], *, total: int, changed: int, now: dt.datetime, policy: ExportPolicy
) -> ExportPlan:
    """Decide the next export of a partition. ``live``: its ready and rebuild rows; ``total``: its
    exportable cards; ``changed``: how many changed after ``chain_since(live)``."""
    rebuild = tuple(e.id for e in live if e.status == ExportStatus.REBUILD)
    if rebuild:
        return ExportPlan(ExportKind.FULL, None, f"rebuild of {len(rebuild)} export(s)", rebuild)
    fulls = [e for e in live if e.status == ExportStatus.READY and e.kind == ExportKind.FULL]
    if not fulls:
        if total == 0:
            return ExportPlan(None, None, "no exportable card yet")
        return ExportPlan(ExportKind.FULL, None, "first full export")
    since = chain_since(live)
    if changed == 0:
        return ExportPlan(None, since, "nothing changed since the last export")
    newest_full = max(fulls, key=lambda e: (e.created_at, e.id))
    if now - newest_full.created_at >= policy.full_every:
        return ExportPlan(ExportKind.FULL, None, f"last full export older than {policy.full_every}")
    if changed > policy.full_changed_share * total:
        return ExportPlan(ExportKind.FULL, None, f"{changed} of {total} cards changed")
    return ExportPlan(ExportKind.INCREMENTAL, since, f"{changed} cards changed")


def expired_by_retention(live: Sequence[ExportInfo], retention_full: int) -> list[str]:
    """Ids to expire: everything older than the oldest of the newest ``retention_full`` ready fulls."""
    fulls = sorted(
        (e for e in live if e.status == ExportStatus.READY and e.kind == ExportKind.FULL),
        key=lambda e: (e.created_at, e.id),
        reverse=True,
    )
    if not fulls:
        return []  # never expire the only way a vendor has to rebuild its copy
    oldest_kept = fulls[: max(1, retention_full)][-1]
    cut = (oldest_kept.created_at, oldest_kept.id)
    return [e.id for e in live if (e.created_at, e.id) < cut]
