"""Esse3 is not a change log: what the incremental read by ``DATA_MOD`` can miss, found by comparing keys
and digests, and the rules for what vanished. Pure functions, no I/O.

- A **digest** of a source row is taken over the fields esc-sync reads, never its ``DATA_MOD``: a row
  touched without a change is no drift, a row changed under an old ``DATA_MOD`` (a late commit) is.
- A partition's **drift**: keys Esse3 has and the state DB does not (*missing*: a late insert), keys
  whose digest differs (*changed*: a late update), keys the state DB has and Esse3's partition does not
  (*vanished*: deleted, or moved to another academic year or career).
- The **mass-deletion guard**: an empty view, a truncated replica or a wrong schema looks like every
  row deleted at once. More than ``max_share`` of a partition's rows vanishing together, or all of
  them, deactivates nothing until a person confirms it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

CAREER_DATA_MOD_COLUMNS = ("STU_DATA_MOD", "ANAPER_DATA_MOD", "CDS_DATA_MOD")
BADGE_COLUMNS_READ = 8  # BDG_ID .. TIPO of badges_*.sql; the ninth, DATA_MOD, is not content


class DriftKind(StrEnum):
    """What the sweep found of a source row (``source_findings.kind``)."""

    MISSING = "missing"  # in Esse3's partition, not in ours: a late insert
    CHANGED = "changed"  # content differs under an old DATA_MOD: a late update
    VANISHED = "vanished"  # in ours, not in Esse3's partition: deleted or moved


def digest(values: Sequence[Any]) -> str:
    """Identity of a source row's content. ``repr`` of the values: the same query through the same
    driver gives the same text; a ``None`` never equals the text ``'None'``."""
    return hashlib.md5(repr(tuple(values)).encode(), usedforsecurity=False).hexdigest()


def content_columns(columns: Sequence[str]) -> tuple[int, ...]:
    """Positions of a careers query's columns that are content (everything but the DATA_MODs)."""
    return tuple(i for i, c in enumerate(columns) if c not in CAREER_DATA_MOD_COLUMNS)


def career_digest(row: Sequence[Any], content: Sequence[int]) -> str:
    return digest([row[i] for i in content])


def badge_digest(row: Sequence[Any]) -> str:
    return digest(row[:BADGE_COLUMNS_READ])


@dataclass
class PartitionDrift:
    """One source table's drift in one partition (keys are the source's integer keys)."""

    missing: list[int] = field(default_factory=list)
    changed: list[int] = field(default_factory=list)
    vanished: list[int] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.missing) + len(self.changed) + len(self.vanished)


def compare(
    source: Iterable[tuple[int, str]],
    local: Mapping[int, str | None],
    known: Collection[int] = (),
    same_content: Mapping[int, bool] | None = None,
) -> PartitionDrift:
    """``source``: (key, digest) of every row of the partition in Esse3; ``local``: key → digest the
    state DB stored (None: stored before digests were kept); ``known``: keys held elsewhere (the
    quarantine: re-read every run anyway). ``same_content``: for keys whose digests differ or are
    unknown, whether the validated record is nonetheless the one stored (then it is no drift)."""
    drift = PartitionDrift()
    seen: set[int] = set()
    for key, row_digest in source:
        seen.add(key)
        if key in local:
            stored = local[key]
            if stored != row_digest and not (same_content or {}).get(key, False):
                drift.changed.append(key)
        elif key not in known:
            drift.missing.append(key)
    drift.vanished = sorted(k for k in local if k not in seen)
    return drift


def guard_reason(table: str, vanished: int, total: int, max_share: float, source_rows: int) -> str | None:
    """Why ``vanished`` of ``total`` rows of a partition must not be applied without a person's
    confirmation, or None. One row is never a mass deletion; an Esse3 returning nothing always is."""
    if vanished == 0:
        return None
    if source_rows == 0:
        return f"Esse3 returns no {table} row for the partition, which held {total}"
    share = vanished / total if total else 1.0
    if vanished > 1 and share > max_share:
        return f"{vanished} of {total} {table} rows ({share:.0%}) vanished at once (limit {max_share:.0%})"
    return None
