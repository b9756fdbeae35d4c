"""The `careers` asset: Esse3 careers of one academic year × university, validated and upserted into
the state DB, incrementally by DATA_MOD watermark. Bad rows go to quarantine; the rest goes on."""
# No `from __future__ import annotations`: Dagster inspects the context annotation at runtime.

import datetime as dt
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetsDefinition,
    MaterializeResult,
    MetadataValue,
    MultiPartitionsDefinition,
    ResourceParam,
    asset,
)
from sqlalchemy import Connection, Engine
from sqlalchemy.engine import Row

from etl.assets.claims import claim_partition
from etl.assets.step_retries import retry_transient
from etl.config import Ateneo, Settings
from etl.domain.career_batch import PreparedBatch, ReadCareer, prepare_batch
from etl.domain.careers import CareerRules, Rejection, shown_fields
from etl.domain.esse3_time import esse3_now, read_since
from etl.domain.source_drift import (
    DriftKind,
    guard_reason,
)
from etl.domain.source_reads import ReadPolicy
from etl.domain.source_values import future_cutoff, key_problem
from etl.domain.states import QuarantineStage
from etl.errors import VanishHeld
from etl.partitions import Partition
from etl.prefetch import prefetch
from etl.resources.esse3 import Esse3Source
from etl.resources.esse3_sources import Esse3Sources
from etl.resources.state_db import StateDB
from etl.store import careers as store
from etl.store import quarantine, source_state, watermarks
from etl.store.bulk import refresh_statistics

P01_STU = "P01_STU"


@dataclass
class CareerSyncResult:
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    quarantined: int = 0
    resolved: int = 0
    vanished: int = 0  # deleted from Esse3: flagged, their cards deactivated
    moved_in: int = 0  # came from another academic year: their badges and cards followed
    held: str | None = None  # a mass deletion the guard held back (one line)
    reasons: Counter[str] = field(default_factory=Counter)

    @property
    def read(self) -> int:
        return self.inserted + self.updated + self.unchanged + self.quarantined


def ingest_careers(
    engine: Engine,
    source: Esse3Source,
    ateneo: Ateneo,
    partition: Partition,
    *,
    today: dt.date | None = None,
    policy: ReadPolicy = ReadPolicy(),
    now: dt.datetime | None = None,
) -> CareerSyncResult:
    """Read the partition's changed careers (plus its quarantined ones, and whatever the sweep or a
    moved row count says the DATA_MOD window missed) and apply them in ONE transaction together with
    the new watermarks, so a crash never leaves a watermark ahead of rows. Reading and validating the
    next batch runs in a thread while this one is written. ``now``: Esse3's wall clock (naive).

    Raises ``VanishHeld`` (after committing everything else) when more careers vanished at once than
    the guard allows: nothing is deactivated until a person confirms it."""
    today = today or dt.date.today()
    cutoff = future_cutoff(now or esse3_now(policy.zone), policy.future_skew)
    rules = CareerRules(ateneo.finalised, ateneo.closing_reasons)
    result = CareerSyncResult()
    seen: dict[str, dt.datetime] = {}
    institution, year = partition.institution, partition.academic_year

    with engine.begin() as conn:

        def apply(batches: Iterable[list[Row]]) -> set[Any]:
            returned: set[Any] = set()
            for batch in prefetch(prepare_batch(b, rules, today, cutoff) for b in batches):
                _apply_batch(conn, partition, batch, result, seen, open_keys)
                returned.update(batch.keys)
            return returned

        open_keys = quarantine.open_keys(conn, institution, year, QuarantineStage.CAREERS)
        since = {
            t: read_since(m, policy.overlap, policy.zone)
            for t, m in watermarks.get_watermarks(conn, partition.key).items()
        }
        read = apply(source.changed_careers(year, since))
        gone = _complete(conn, source, partition, apply, open_keys, read)
        # A quarantined career that vanished from Esse3 (deleted or moved year) is resolved too.
        vanished_quarantine = {k for k in open_keys if k.isdigit()}
        quarantine.resolve(conn, institution, QuarantineStage.CAREERS, P01_STU, vanished_quarantine)
        result.resolved += len(vanished_quarantine)
        result.vanished, result.held = _apply_vanished(conn, partition, policy, gone)
        watermarks.advance_watermarks(conn, partition.key, seen)
        refresh_statistics(conn, "careers", "quarantine", written=result.inserted + result.updated)
    if result.held:
        raise VanishHeld(
            f"{partition.key}: {result.held}: nothing deactivated; once a person has looked, "
            "`esc-sync reconcile --repair --confirm-vanished` applies it"
        )
    return result


class Gone(NamedTuple):
    """Keys of a partition's rows that are no longer in its Esse3 partition."""

    deleted: list[int]  # found nowhere in Esse3
    source_rows: int  # the partition's rows in Esse3 (0: Esse3 returns nothing for it)
    total: int  # the partition's rows in the state DB


def _complete(
    conn: Connection,
    source: Esse3Source,
    partition: Partition,
    apply: Callable[[Iterable[list[Row]]], set[Any]],
    open_keys: set[str],
    read: set[Any],
) -> Gone:
    """What the DATA_MOD window cannot see: rows the sweep found (etl.sweep), and, when Esse3's row
    count of the partition moved since its keys were last compared (or a deletion is held), the keys
    Esse3 has and we lack (a late insert) or we have and Esse3 lacks. Quarantined rows are re-read too.
    ``read``: the keys this run has read already. Returns what vanished from Esse3 altogether; rows that
    moved to another year are that partition's."""
    institution, year = partition.institution, partition.academic_year
    found = source_state.findings(conn, institution, year, P01_STU)
    reread = {k for k, kind in found.items() if kind is not DriftKind.VANISHED}
    candidates = set(found) - reread
    local = store.partition_keys(conn, "careers", institution, year)
    counted = source.count_of_year(P01_STU, year)
    compared = counted != watermarks.get_row_counts(conn, partition.key).get(P01_STU)
    if compared or source_state.get_hold(conn, partition.key, P01_STU):
        keys = source.keys_of_year(P01_STU, year)
        counted = len(keys)
        exact = {int(k) for k in keys if key_problem("STU_ID", k) is None}
        reread |= exact - local
        candidates |= local - exact
        compared = True
    # Quarantined rows are re-read even when their DATA_MOD did not move (see careers_by_id.sql);
    # a row whose key is not an integer can only come back when it changes.
    reread |= {int(k) for k in open_keys if k.isdigit()}
    returned = apply(source.careers_by_id(year, sorted(reread - read))) | (reread & read)
    candidates = (candidates | (reread - returned)) & local
    deleted: list[int] = []
    if candidates:
        now_in = source.years_of(P01_STU, sorted(candidates))
        back = sorted(k for k, y in now_in.items() if y == year)  # still here: the count raced a write
        apply(source.careers_by_id(year, back))
        deleted = sorted(candidates - set(now_in))
    if compared:
        watermarks.set_row_count(conn, partition.key, P01_STU, counted)
    source_state.clear_findings(conn, institution, P01_STU, found)
    return Gone(deleted, counted, len(local))


def _apply_vanished(
    conn: Connection, partition: Partition, policy: ReadPolicy, gone: Gone
) -> tuple[int, str | None]:
    """Flag careers deleted from Esse3 (their cards are deactivated by `esc_cards`), unless the guard
    holds them: then record the hold and return its reason."""
    held = source_state.get_hold(conn, partition.key, P01_STU)
    reason = guard_reason(
        "careers", len(gone.deleted), gone.total, policy.max_vanished_share, gone.source_rows
    )
    if reason and not (held and held.confirmed):
        source_state.hold(
            conn, partition.institution, partition.key, P01_STU, len(gone.deleted), gone.total, reason
        )
        return 0, reason
    if held:
        source_state.release_hold(conn, partition.key, P01_STU)
    store.mark_vanished(conn, "careers", partition.institution, gone.deleted)
    return len(gone.deleted), None


def _apply_batch(
    conn: Connection,
    partition: Partition,
    batch: PreparedBatch,
    result: CareerSyncResult,
    seen: dict[str, dt.datetime],
    open_keys: set[str],
) -> None:
    for table, data_mod in batch.newest.items():
        if table not in seen or data_mod > seen[table]:
            seen[table] = data_mod
    bad = list(batch.bad)
    # A matricola already held by another career (here or earlier in the batch) is quarantined.
    holders = store.matricola_holders(conn, partition.institution, (c.record.matricola for c in batch.good))
    kept: list[ReadCareer] = []
    for career in batch.good:
        holder = holders.setdefault(career.record.matricola, career.record.stu_id)
        if holder != career.record.stu_id:
            bad.append(Rejection(career.record.stu_id, (f"duplicate matricola (also on STU_ID {holder})",)))
        else:
            kept.append(career)

    existing = store.existing_careers(conn, partition.institution, [c.record.stu_id for c in kept])
    inserted, updated, digests, moved, shown = [], [], [], [], []
    for c in kept:
        old = existing.get(c.record.stu_id)
        if old is None:
            inserted.append(c)
        elif old.row_hash != c.row_hash or old.vanished:
            updated.append(c)
            if old.academic_year != c.record.academic_year:
                moved.append(c.record.stu_id)
            if old.shown != shown_fields(c.record):
                shown.append(c.record.stu_id)
        elif old.source_digest != c.digest:
            digests.append((c.record.stu_id, c.digest))
    result.inserted += len(inserted)
    result.updated += len(updated)
    result.unchanged += len(kept) - len(inserted) - len(updated)
    result.moved_in += len(moved)
    store.upsert_careers(conn, partition.institution, inserted, new=True)
    store.upsert_careers(conn, partition.institution, updated)
    store.refresh_digests(conn, "careers", partition.institution, digests)
    # A career that changed academic year takes its badges and cards along; vendors see the change.
    source_state.move_careers(conn, partition.institution, partition.academic_year, moved)
    source_state.touch_cards(conn, partition.institution, shown)

    quarantine.record(
        conn, partition.institution, partition.academic_year, QuarantineStage.CAREERS, P01_STU, bad
    )
    result.quarantined += len(bad)
    result.reasons.update(reason for rej in bad for reason in rej.reasons)
    good_keys = {str(c.record.stu_id) for c in kept}
    cleared = good_keys & open_keys
    quarantine.resolve(conn, partition.institution, QuarantineStage.CAREERS, P01_STU, cleared)
    result.resolved += len(cleared)
    # Rows seen in this run are settled: either processed or (re)quarantined.
    open_keys.difference_update(good_keys | {str(r.stu_id) for r in bad})


NO_DUPLICATES = "no_duplicate_careers"
QUARANTINE_SHARE = "quarantine_share"


def build_careers_asset(partitions: MultiPartitionsDefinition, settings: Settings) -> AssetsDefinition:
    @asset(
        name="careers",
        partitions_def=partitions,
        group_name="esse3",
        kinds={"sql"},
        description="Esse3 careers (P01_STU ⋈ P01_ANAPER ⋈ P06_CDS) validated into the state DB.",
        check_specs=[
            AssetCheckSpec(NO_DUPLICATES, asset="careers", description="No matricola on two careers."),
            AssetCheckSpec(
                QUARANTINE_SHARE, asset="careers", description="Quarantined share below the threshold."
            ),
        ],
    )
    @retry_transient(settings)
    def careers(
        context: AssetExecutionContext, state_db: ResourceParam[StateDB], esse3: ResourceParam[Esse3Sources]
    ) -> MaterializeResult:
        partition = Partition.parse(context.partition_key)
        ateneo = settings.ateneo(partition.institution)
        with claim_partition(context, state_db.engine, partition.key):
            result = ingest_careers(
                state_db.engine, esse3.of(ateneo.code), ateneo, partition, policy=settings.read_policy
            )
        with state_db.engine.connect() as conn:
            counts = store.partition_counts(conn, partition.institution, partition.academic_year)
            dupes = store.duplicate_matricole(conn, partition.institution)
        total = counts["careers"] + counts["quarantined"]
        share = counts["quarantined"] / total if total else 0.0
        threshold = settings.quarantine_warn_share
        context.log.info(
            f"{partition.key}: {result.inserted} inserted, {result.updated} updated, "
            f"{result.unchanged} unchanged, {result.quarantined} quarantined, {result.resolved} resolved, "
            f"{result.vanished} vanished, {result.moved_in} moved in"
        )
        return MaterializeResult(
            metadata={
                "dagster/row_count": counts["careers"],
                "inserted": result.inserted,
                "updated": result.updated,
                "unchanged": result.unchanged,
                "quarantined": result.quarantined,
                "quarantine_resolved": result.resolved,
                "vanished": result.vanished,
                "moved_in": result.moved_in,
                "finalised_total": counts["finalised"],
                "quarantined_open": counts["quarantined"],
                # Counts and reasons only: names and matricole never reach Dagster's storage.
                "quarantine_reasons": MetadataValue.json(dict(result.reasons.most_common(10))),
            },
            check_results=[
                AssetCheckResult(
                    check_name=NO_DUPLICATES,
                    passed=not dupes,
                    metadata={"duplicated_matricole": len(dupes)},
                ),
                AssetCheckResult(
                    check_name=QUARANTINE_SHARE,
                    passed=share <= threshold,
                    severity=AssetCheckSeverity.WARN,
                    metadata={"share": round(share, 4), "threshold": threshold},
                ),
            ],
        )

    return careers
