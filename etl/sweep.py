"""The source sweep: Esse3's careers (joined with their persons and courses) and badges compared with
the state DB by key and by digest, partition by partition, whatever their ``DATA_MOD`` says. It finds
what the incremental read cannot see: rows committed late under an old ``DATA_MOD`` (missing here, or
changed), rows deleted, rows moved to another academic year. It repairs nothing itself: with
``record`` its findings go to ``source_findings``, and each partition's next run re-reads those keys
through the normal assets (same claims, quarantine rules and crash safety). Run nightly in a
deployment (the reconciliation job) and by `esc-sync reconcile`.

Memory stays flat in the number of careers: one partition's keys and digests at a time, the rows
streamed in batches.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, select

from etl.config import Ateneo
from etl.domain.careers import CareerRecord, CareerRules, map_career
from etl.domain.source_drift import (
    PartitionDrift,
    badge_content,
    career_content,
    compare,
    digest_batch,
    suspects,
)
from etl.errors import EscSyncError
from etl.resources.runtime import Runtime
from etl.store import badges, source_state, watermarks
from etl.store import careers as careers_store
from etl.store.models import Quarantine

TABLES = ("P01_STU", "P01_BADGE")
_STAGES = {"P01_STU": "careers", "P01_BADGE": "badges"}


@dataclass
class UniversitySweep:
    institution: str
    drift: dict[tuple[int, str], PartitionDrift] = field(default_factory=dict)  # (year, table) → drift
    error: str | None = None  # the university could not be swept (its Esse3 unreachable)

    def count(self, table: str) -> dict[str, int]:
        """Missing, changed, vanished (deleted) and moved rows of one table over every partition: a
        key vanished from one year and missing from another moved between them."""
        missing = {k for (_, t), d in self.drift.items() if t == table for k in d.missing}
        vanished = {k for (_, t), d in self.drift.items() if t == table for k in d.vanished}
        changed = sum(len(d.changed) for (_, t), d in self.drift.items() if t == table)
        moved = missing & vanished
        return {
            "missing": len(missing - moved),
            "changed": changed,
            "vanished": len(vanished - moved),
            "moved": len(moved),
        }

    @property
    def total(self) -> int:
        return sum(d.total for d in self.drift.values())

    @property
    def years(self) -> list[int]:
        return sorted({y for (y, _), d in self.drift.items() if d.total})


def sweep(
    runtime: Runtime, institutions: Iterable[str], *, record: bool, today: dt.date | None = None
) -> list[UniversitySweep]:
    """Compare every partition of each university that has been read (a partition never read is the
    backfill's to read); with ``record``, store the findings for the partitions' next runs (and
    refresh digests that moved without a change)."""
    today = today or dt.date.today()
    with runtime.engine.connect() as conn:
        read = set(watermarks.all_watermarks(conn))  # a partition never read is the backfill's
    out = []
    for code in institutions:
        result = UniversitySweep(code)
        try:
            ateneo = runtime.settings.ateneo(code)
            for year in runtime.settings.academic_years:
                for table in TABLES:
                    if (f"{year}|{code}", table) not in read:
                        continue
                    drift = sweep_partition(runtime, ateneo, year, table, today, record=record)
                    if drift.total:
                        result.drift[year, table] = drift
        except EscSyncError as e:  # this university's Esse3 is down: the others go on
            result.error = str(e)
        out.append(result)
    return out


def sweep_partition(
    runtime: Runtime, ateneo: Ateneo, year: int, table: str, today: dt.date, *, record: bool
) -> PartitionDrift:
    """One partition's careers (``P01_STU``) or badges (``P01_BADGE``) against the state DB. Esse3's
    rows stream in batches; the state DB's keys and digests load in a thread meanwhile (reading the
    next batch in a thread too was measured: slower, the two compete for the GIL). Rows whose digest
    moved are read again by key and validated: only a change in what esc-sync keeps of them is drift."""
    source = runtime.esse3(ateneo.code)
    batches = source.careers_of_year(year) if table == "P01_STU" else source.badges_of_year(year)
    digests: dict[int, str] = {}
    with ThreadPoolExecutor(1) as pool:
        loading = pool.submit(_local_state, runtime.engine, ateneo.code, year, table)
        content: Callable[[Any], tuple[Any, ...]] | None = None
        for batch in batches:
            content = content or (career_content(batch[0]._fields) if table == "P01_STU" else badge_content)
            digests.update(digest_batch(batch, content))
        local, known = loading.result()
    unchanged = _same_content(runtime, ateneo, year, table, suspects(digests, local), today)
    drift = compare(digests, local, known, unchanged)
    if record:
        with runtime.engine.begin() as conn:
            source_state.record_findings(conn, ateneo.code, year, table, drift)
            careers_store.refresh_digests(
                conn, _STAGES[table], ateneo.code, [(k, digests[k]) for k in unchanged]
            )
    return drift


def _local_state(
    engine: Engine, institution: str, year: int, table: str
) -> tuple[dict[int, str | None], set[int]]:
    """The partition's keys and digests in the state DB (vanished rows left out), and its quarantined
    keys."""
    name, key = {"P01_STU": ("careers", "stu_id"), "P01_BADGE": ("badges", "bdg_id")}[table]
    with engine.connect() as conn:
        rows = conn.exec_driver_sql(
            f"SELECT {key}, source_digest FROM {name} WHERE institution = {_param(conn)} "
            f"AND academic_year = {_param(conn)} AND vanished_at IS NULL",
            (institution, year),
        )
        local: dict[int, str | None] = {k: d for k, d in rows}
        return local, _quarantined(conn, institution, year, table)


def _param(conn: Connection) -> str:
    return "?" if conn.dialect.name == "sqlite" else "%s"


def _quarantined(conn: Connection, institution: str, year: int, table: str) -> set[int]:
    rows = conn.execute(
        select(Quarantine.source_key).where(
            Quarantine.institution == institution,
            Quarantine.academic_year == year,
            Quarantine.source_table == table,
            Quarantine.resolved_at.is_(None),
        )
    )
    return {int(k) for k in rows.scalars() if k.isdigit()}


def _same_content(
    runtime: Runtime, ateneo: Ateneo, year: int, table: str, keys: list[int], today: dt.date
) -> set[int]:
    """Of the rows whose digest differs from the stored one, those whose validated record (a career's
    row hash, a badge's content) is the stored one all the same: a row touched, an ESI written back,
    a digest kept before digests existed."""
    if not keys:
        return set()
    source, same = runtime.esse3(ateneo.code), set()
    with runtime.engine.connect() as conn:
        if table == "P01_STU":
            rules = CareerRules(ateneo.finalised, ateneo.closing_reasons)
            for batch in source.careers_by_id(year, keys):
                stored = careers_store.existing_careers(conn, ateneo.code, [int(r[0]) for r in batch])
                for row in batch:
                    mapped = map_career(row._asdict(), rules, today)
                    old = stored.get(int(row[0]))
                    if (
                        isinstance(mapped, CareerRecord)
                        and old is not None
                        and old.row_hash == mapped.row_hash()
                    ):
                        same.add(int(row[0]))
            return same
        for batch in source.badges_by_id(year, keys):
            stored_badges = badges.existing_badges(conn, ateneo.code, [int(r[0]) for r in batch])
            for row in batch:
                _, stu_id, pers_id, ini, fin, ann, printed, kind = badge_content(row)
                b = stored_badges.get(int(row[0]))
                if b is not None and b.content == (stu_id, pers_id, year, ini, fin, bool(ann), printed, kind):
                    same.add(int(row[0]))
    return same
