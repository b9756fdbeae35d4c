"""Which partitions changed in Esse3 since we last processed them: Esse3 change markers compared with
the watermarks in our state DB (authoritative). Shared by the sensor and `esc-sync demo --mutate`."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from etl.config import Settings
from etl.domain.source_values import future_cutoff
from etl.errors import EscSyncError
from etl.partitions import Partition
from etl.resources.esse3 import CAREER_TABLES, ChangeMarker
from etl.resources.runtime import Runtime
from etl.store.careers import all_watermarks

# Source tables whose watermarks decide whether a partition needs a run.
WATCHED_TABLES = (*CAREER_TABLES, "P01_BADGE")


@dataclass(frozen=True)
class PartitionChange:
    partition: Partition
    newest: dt.datetime  # newest source DATA_MOD not yet processed

    @property
    def run_key(self) -> str:
        # Same change → same key: Dagster never launches it twice, whatever the sensor cursor.
        return f"{self.partition.key}@{self.newest.isoformat()}"


def changed_partitions(
    institution: str,
    markers: Iterable[ChangeMarker],
    watermarks: Mapping[tuple[str, str], dt.datetime],
    years: Iterable[int],
    tables: Iterable[str],
) -> list[PartitionChange]:
    """Partitions of ``institution`` where a watched table has rows newer than our watermark.

    A change is named by the partition's newest row in *any* watched table, not only in the tables
    still ahead of their watermarks: a table whose marker counts rows the run has no reason to read
    (say the badges of a career that is not finalised) stays ahead after the run, and must not give
    the partition a new run key, and a second run, on the next tick."""
    wanted, watched = set(years), set(tables)
    newest: dict[int, dt.datetime] = {}
    changed: set[int] = set()
    for m in markers:
        if m.academic_year not in wanted or m.source_table not in watched:
            continue
        newest[m.academic_year] = max(newest.get(m.academic_year, m.max_data_mod), m.max_data_mod)
        mark = watermarks.get((Partition(m.academic_year, institution).key, m.source_table))
        if mark is None or m.max_data_mod > mark:
            changed.add(m.academic_year)
    return [PartitionChange(Partition(y, institution), newest[y]) for y in sorted(changed)]


def pending_partitions(
    settings: Settings, runtime: Runtime, on_error: Callable[[EscSyncError], None] | None = None
) -> list[PartitionChange]:
    """Every partition of every university with Esse3 changes beyond our watermarks. ``on_error``: a
    university whose Esse3 cannot be read is reported to it and the others go on (else it raises)."""
    with runtime.engine.connect() as conn:
        marks = all_watermarks(conn)
    cutoff = future_cutoff(dt.datetime.now(), settings.esse3_future_skew)
    changes = []
    for code in settings.codes:
        try:
            markers = runtime.esse3(code).change_markers(cutoff)
        except EscSyncError as e:
            if on_error is None:
                raise
            on_error(e)
            continue
        changes += changed_partitions(code, markers, marks, settings.academic_years, WATCHED_TABLES)
    return changes
