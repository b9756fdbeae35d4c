"""Which partitions changed in Esse3 since we last processed them: Esse3 change markers compared with
the watermarks in our state DB (authoritative). Shared by the sensor and `esc-sync demo --mutate`."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from sqlalchemy import Connection

from etl.config import Settings
from etl.domain.careers import CAREER_TABLES
from etl.domain.esse3_time import esse3_now, inside_repeat
from etl.domain.source_values import future_cutoff
from etl.errors import EscSyncError
from etl.partitions import Partition, all_partitions
from etl.resources.esse3 import ChangeMarker
from etl.resources.runtime import Runtime
from etl.store import source_state
from etl.store.watermarks import all_row_counts, all_watermarks

# Source tables whose watermarks decide whether a partition needs a run.
WATCHED_TABLES = (*CAREER_TABLES, "P01_BADGE")


COUNTED_TABLES = ("P01_STU", "P01_BADGE")  # whose row counts the markers carry


@dataclass(frozen=True)
class PartitionChange:
    partition: Partition
    newest: dt.datetime | None  # newest source DATA_MOD not yet processed (None: only a count moved)
    rows: tuple[int, ...] = ()  # Esse3's careers and badges counts, when they name the change
    work: str = ""  # local work that names the run instead (etl.changes.local_work)
    first_read: bool = False  # never read before: a backfill's partition, not an incremental change

    @property
    def run_key(self) -> str:
        # Same change → same key: Dagster never launches it twice, whatever the sensor cursor.
        if self.work:
            return f"{self.partition.key}@{self.work}"
        newest = self.newest.isoformat() if self.newest else "-"
        counts = f"#{'/'.join(map(str, self.rows))}" if self.rows else ""
        return f"{self.partition.key}@{newest}{counts}"


def changed_partitions(
    institution: str,
    markers: Iterable[ChangeMarker],
    watermarks: Mapping[tuple[str, str], dt.datetime],
    years: Iterable[int],
    tables: Iterable[str],
    row_counts: Mapping[tuple[str, str], int | None] | None = None,
    clock: RepeatClock | None = None,
) -> list[PartitionChange]:
    """Partitions of ``institution`` where a watched table has rows newer than our watermark, or (given
    ``row_counts``, Esse3's counts when we last compared keys) where the careers' or badges' count
    moved: a row committed late under an old DATA_MOD, or a deletion. A partition we hold rows of that
    Esse3 no longer returns at all counts 0. Given ``clock``, a partition whose watermark lies in the
    autumn's repeated hour while Esse3's clock is still in it is read again every few minutes: rows
    written in the hour's second pass carry a DATA_MOD *before* the watermark, which no marker shows.

    A change is named by the partition's newest row in *any* watched table, not only in the tables
    still ahead of their watermarks: a table whose marker counts rows the run has no reason to read
    (say the badges of a career that is not finalised) stays ahead after the run, and must not give
    the partition a new run key, and a second run, on the next tick."""
    wanted, watched = set(years), set(tables)
    newest: dict[int, dt.datetime] = {}
    counts: dict[tuple[int, str], int] = {}
    changed: set[int] = set()
    for m in markers:
        if m.academic_year not in wanted or m.source_table not in watched:
            continue
        key = Partition(m.academic_year, institution).key
        if m.rows is not None:
            counts[m.academic_year, m.source_table] = m.rows
        if m.max_data_mod is None:
            continue
        newest[m.academic_year] = max(newest.get(m.academic_year, m.max_data_mod), m.max_data_mod)
        mark = watermarks.get((key, m.source_table))
        if mark is None or m.max_data_mod > mark:
            changed.add(m.academic_year)
    if row_counts is not None:
        for year in wanted:
            key = Partition(year, institution).key
            for table in watched.intersection(COUNTED_TABLES):
                recorded = row_counts.get((key, table))
                now = counts.get((year, table), 0)
                if (recorded is None and now > 0) or (recorded is not None and recorded != now):
                    changed.add(year)
    repeating: set[int] = set()
    if clock is not None:
        for year in wanted:
            key = Partition(year, institution).key
            if any(
                (mark := watermarks.get((key, t)))
                and inside_repeat(mark, clock.now, clock.overlap, clock.zone)
                for t in watched
            ):
                repeating.add(year)
    return [
        PartitionChange(
            Partition(y, institution),
            newest.get(y),
            tuple(counts.get((y, t), 0) for t in COUNTED_TABLES) if row_counts is not None else (),
            work=f"repeat:{clock.bucket}" if clock is not None and y in repeating else "",
            first_read=not any((Partition(y, institution).key, t) in watermarks for t in watched),
        )
        for y in sorted(changed | repeating)
    ]


@dataclass(frozen=True)
class RepeatClock:
    """Esse3's clock as the change detection needs it around the autumn's repeated hour."""

    now: dt.datetime  # Esse3's wall clock, naive
    zone: ZoneInfo
    overlap: dt.timedelta
    bucket: str  # the real (UTC) time, in 5-minute steps: names the repeated reads' runs

    @classmethod
    def at(cls, zone: ZoneInfo, overlap: dt.timedelta, instant: dt.datetime | None = None) -> RepeatClock:
        instant = instant or dt.datetime.now(dt.UTC)
        bucket = instant.astimezone(dt.UTC).replace(second=0, microsecond=0)
        bucket -= dt.timedelta(minutes=bucket.minute % 5)
        return cls(esse3_now(zone, instant), zone, overlap, bucket.strftime("%Y%m%dT%H%MZ"))


def pending_partitions(
    settings: Settings,
    runtime: Runtime,
    on_error: Callable[[EscSyncError], None] | None = None,
    instant: dt.datetime | None = None,
) -> list[PartitionChange]:
    """Every partition of every university with Esse3 changes beyond our watermarks, or local work.
    ``on_error``: a university whose Esse3 cannot be read is reported to it and the others go on (else
    it raises). ``instant``: now (aware; tests fix it around the autumn's repeated hour)."""
    with runtime.engine.connect() as conn:
        marks = all_watermarks(conn)
        counts = all_row_counts(conn)
    policy = settings.read_policy
    clock = RepeatClock.at(policy.zone, policy.overlap, instant)
    cutoff = future_cutoff(clock.now, policy.future_skew)
    changes = []
    for code in settings.codes:
        try:
            markers = runtime.esse3(code).change_markers(cutoff)
        except EscSyncError as e:
            if on_error is None:
                raise
            on_error(e)
            continue
        changes += changed_partitions(
            code, markers, marks, settings.academic_years, WATCHED_TABLES, counts, clock
        )
    with runtime.engine.connect() as conn:
        local = local_work(conn, settings)
    seen = {c.partition for c in changes}
    return changes + [c for c in local if c.partition not in seen]


def local_work(conn: Connection, settings: Settings) -> list[PartitionChange]:
    """Partitions with work the state DB holds for them, whatever Esse3's markers say: rows the source
    sweep found (to re-read by key), exports to rebuild (cards moved to another academic year), mass
    deletions a person confirmed. Each named by its work, so a run carries it out once."""
    configured = {(p.institution, p.academic_year) for p in all_partitions(settings)}
    work: dict[tuple[str, int], str] = {}
    for inst, year, latest in source_state.findings_by_partition(conn):
        work[inst, year] = f"sweep:{latest.isoformat()}"
    for inst, year, export_id in source_state.exports_to_rebuild(conn):
        work.setdefault((inst, year), f"rebuild:{export_id}")
    for hold in source_state.holds(conn):
        if hold.confirmed_at is not None:
            p = Partition.parse(hold.partition_key)
            work.setdefault((p.institution, p.academic_year), f"confirmed:{hold.confirmed_at.isoformat()}")
    return [
        PartitionChange(Partition(year, inst), None, work=reason)
        for (inst, year), reason in sorted(work.items())
        if (inst, year) in configured
    ]
