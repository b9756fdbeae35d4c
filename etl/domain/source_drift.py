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
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from operator import itemgetter
from typing import Any

from etl.domain.source_values import key_problem

CAREER_DATA_MOD_COLUMNS = ("STU_DATA_MOD", "ANAPER_DATA_MOD", "CDS_DATA_MOD")
BADGE_COLUMNS_READ = 8  # BDG_ID .. TIPO of badges_*.sql; the ninth, DATA_MOD, is not content


class DriftKind(StrEnum):
    """What the sweep found of a source row (``source_findings.kind``)."""

    MISSING = "missing"  # in Esse3's partition, not in ours: a late insert
    CHANGED = "changed"  # content differs under an old DATA_MOD: a late update
    VANISHED = "vanished"  # in ours, not in Esse3's partition: deleted or moved


def digest(values: tuple[Any, ...]) -> str:
    """Identity of a source row's content. ``repr`` of the values: the same query through the same
    driver gives the same text; a ``None`` never equals the text ``'None'``."""
    return hashlib.md5(repr(values).encode(), usedforsecurity=False).hexdigest()


def career_content(columns: Sequence[str]) -> Callable[[Sequence[Any]], tuple[Any, ...]]:
    """What a careers query's row is digested over: every column but the DATA_MODs (``columns``: the
    query's column names)."""
    return itemgetter(*(i for i, c in enumerate(columns) if c not in CAREER_DATA_MOD_COLUMNS))


def career_digester(columns: Sequence[str]) -> Callable[[Sequence[Any]], str]:
    content = career_content(columns)
    return lambda row: digest(content(row))


badge_content = itemgetter(*range(BADGE_COLUMNS_READ))


def digest_batch(
    rows: Iterable[Sequence[Any]], content: Callable[[Sequence[Any]], tuple[Any, ...]]
) -> dict[int, str]:
    """Key → digest of each row (the key first), the hot loop of the sweep: ``digest`` inlined. A key
    that is not an exact integer is left out (the runs quarantine it under its text)."""
    out: dict[int, str] = {}
    md5 = hashlib.md5
    for row in rows:
        key = row[0]
        if type(key) is int or not key_problem("KEY", key):
            out[int(key)] = md5(repr(content(row)).encode(), usedforsecurity=False).hexdigest()
    return out


def badge_digest(row: Sequence[Any]) -> str:
    return digest(badge_content(row))


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
    source: Mapping[int, str],
    local: Mapping[int, str | None],
    known: Collection[int] = (),
    same_content: Collection[int] = (),
) -> PartitionDrift:
    """``source``: key → digest of every row of the partition in Esse3; ``local``: key → digest the
    state DB stored (None: stored before digests were kept); ``known``: keys held elsewhere (the
    quarantine: re-read every run anyway); ``same_content``: keys whose digests differ but whose
    validated record is the one stored all the same (no drift). Set operations: no Python loop over
    the rows that agree."""
    differ = {k for k, _ in source.items() - local.items()}
    return PartitionDrift(
        missing=sorted(differ - local.keys() - set(known)),
        changed=sorted((differ & local.keys()) - set(same_content)),
        vanished=sorted(local.keys() - source.keys()),
    )


def suspects(source: Mapping[int, str], local: Mapping[int, str | None]) -> list[int]:
    """Keys in both whose digests differ: changed, or only touched (checked against the records)."""
    return sorted(k for k, _ in source.items() - local.items() if k in local)


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
