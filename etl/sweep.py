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
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, select

from etl.config import Ateneo
from etl.domain.careers import CareerRecord, CareerRules, map_career
from etl.domain.source_drift import PartitionDrift, badge_digest, career_digest, compare, content_columns
from etl.domain.source_values import key_problem
from etl.errors import EscSyncError
from etl.resources.runtime import Runtime
from etl.store import careers as careers_store
from etl.store import router_state, source_state
from etl.store.models import Badge, Career, Quarantine

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
        read = set(careers_store.all_watermarks(conn))  # a partition never read is the backfill's
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
    source = runtime.esse3(ateneo.code)
    with runtime.engine.connect() as conn:
        local = _local_digests(conn, ateneo.code, year, table)
        known = _quarantined(conn, ateneo.code, year, table)
    pairs: list[tuple[int, str]] = []
    same: dict[int, bool] = {}
    refresh: list[tuple[int, str]] = []
    rules = CareerRules(ateneo.finalised, ateneo.closing_reasons)
    batches = source.careers_of_year(year) if table == "P01_STU" else source.badges_of_year(year)
    for batch in batches:
        digest_of = _career_digester(batch) if table == "P01_STU" else badge_digest
        suspects: dict[int, Any] = {}
        for row in batch:
            if key_problem("KEY", row[0]):
                continue  # quarantined by the runs, under the key's text
            key, digest = int(row[0]), digest_of(row)
            pairs.append((key, digest))
            if key in local and local[key] != digest:
                suspects[key] = row
        if suspects:  # digest moved: is what esc-sync keeps of the row the same? (a touched row,
            # an ESI written back, a digest kept before digests existed)
            with runtime.engine.connect() as conn:
                for key, unchanged in _same_content(conn, ateneo.code, table, suspects, rules, today).items():
                    same[key] = unchanged
                    if unchanged:
                        refresh.append((key, digest_of(suspects[key])))
    drift = compare(pairs, local, known, same)
    if record:
        with runtime.engine.begin() as conn:
            source_state.record_findings(conn, ateneo.code, year, table, drift)
            careers_store.refresh_digests(conn, _STAGES[table], ateneo.code, refresh)
    return drift


def _career_digester(batch: list[Any]) -> Any:
    content = content_columns(batch[0]._fields)
    return lambda row: career_digest(row, content)


def _local_digests(conn: Connection, institution: str, year: int, table: str) -> dict[int, str | None]:
    model = Career if table == "P01_STU" else Badge
    key = model.stu_id if model is Career else Badge.bdg_id
    rows = conn.execution_options(yield_per=10_000).execute(
        select(key, model.source_digest).where(
            model.institution == institution, model.academic_year == year, model.vanished_at.is_(None)
        )
    )
    return {k: d for k, d in rows}


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
    conn: Connection, institution: str, table: str, rows: dict[int, Any], rules: CareerRules, today: dt.date
) -> dict[int, bool]:
    """For rows whose digest differs from the stored one: whether the record esc-sync would keep is
    the stored one all the same."""
    if table == "P01_STU":
        stored = careers_store.existing_careers(conn, institution, sorted(rows))
        out = {}
        for key, row in rows.items():
            mapped = map_career(row._asdict(), rules, today)
            out[key] = (
                isinstance(mapped, CareerRecord)
                and key in stored
                and stored[key].row_hash == mapped.row_hash()
            )
        return out
    badges = router_state.existing_badges(conn, institution, sorted(rows))
    out = {}
    for key, row in rows.items():
        _, stu_id, pers_id, ini, fin, ann, printed, kind, _ = row
        old = badges.get(key)
        out[key] = old is not None and old.content == (
            stu_id,
            pers_id,
            old.academic_year,
            ini,
            fin,
            bool(ann),
            printed,
            kind,
        )
    return out
