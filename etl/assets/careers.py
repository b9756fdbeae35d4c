"""The `careers` asset: Esse3 careers of one academic year × university, validated and upserted into
the state DB, incrementally by DATA_MOD watermark. Bad rows go to quarantine; the rest goes on."""
# No `from __future__ import annotations`: Dagster inspects the context annotation at runtime.

import datetime as dt
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

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
from etl.config import Ateneo
from etl.domain.careers import SOURCE_COLUMNS, CareerRecord, CareerRules, Rejection, map_career
from etl.domain.source_values import DEFAULT_FUTURE_SKEW, future_cutoff, in_the_future, quarantine_key
from etl.errors import EscSyncError
from etl.partitions import Partition
from etl.prefetch import prefetch
from etl.resources.esse3 import CAREER_TABLES, EPOCH, Esse3Source
from etl.resources.runtime import Runtime
from etl.store import careers as store
from etl.store.bulk import refresh_statistics

OVERLAP = dt.timedelta(minutes=10)  # tolerates Esse3 clock skew and long transactions
BULK = 500  # rows written after which the planner statistics are refreshed
_DATA_MOD_COLUMNS = ("STU_DATA_MOD", "ANAPER_DATA_MOD", "CDS_DATA_MOD")


@dataclass
class CareerSyncResult:
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    quarantined: int = 0
    resolved: int = 0
    reasons: Counter[str] = field(default_factory=Counter)

    @property
    def read(self) -> int:
        return self.inserted + self.updated + self.unchanged + self.quarantined


class PreparedBatch(NamedTuple):
    """One source batch validated, without touching the state DB: what can run ahead of the writes."""

    good: list[tuple[CareerRecord, str, dt.datetime]]  # record, row hash, newest DATA_MOD of its rows
    bad: list[Rejection]
    newest: dict[str, dt.datetime]  # per source table, the newest DATA_MOD in the batch


def prepare_batch(
    batch: list[Row], rules: CareerRules, today: dt.date, cutoff: dt.datetime = dt.datetime.max
) -> PreparedBatch:
    """``cutoff``: the latest believable DATA_MOD. A row changed "after" it is quarantined and its
    DATA_MOD never reaches a watermark, so it cannot hide later changes of its academic year."""
    keys = batch[0]._fields
    missing = SOURCE_COLUMNS.union(_DATA_MOD_COLUMNS).difference(keys)
    if missing:  # a site's edit of the SQL lost a column: no career can be validated
        raise EscSyncError(f"Esse3 careers query returns no {', '.join(sorted(missing))} (sql/esse3/)")
    stu, anaper, cds = (keys.index(c) for c in _DATA_MOD_COLUMNS)
    columns = tuple(zip(CAREER_TABLES, (stu, anaper, cds), strict=True))
    newest: dict[str, dt.datetime] = {}
    for table, i in columns:
        values = [v for row in batch if (v := row[i]) is not None and v <= cutoff]
        if values:
            newest[table] = max(values)
    good: list[tuple[CareerRecord, str, dt.datetime]] = []
    bad: list[Rejection] = []
    copies = Counter(row[0] for row in batch)  # the reader keeps the rows of one key in one batch
    for key in (k for k, n in copies.items() if n > 1):
        bad.append(Rejection(quarantine_key(key), ("duplicate STU_ID (more than one row with this key)",)))
    for row in batch:
        if copies[row[0]] > 1:
            continue
        mapped = map_career(dict(zip(keys, row, strict=True)), rules, today)  # plain dict: fastest lookups
        if future := [t for t, i in columns if in_the_future(row[i], cutoff)]:
            earlier = mapped.reasons if isinstance(mapped, Rejection) else ()
            reason = f"DATA_MOD in the future ({', '.join(future)})"
            bad.append(Rejection(mapped.stu_id, (*earlier, reason)))
            continue
        if isinstance(mapped, Rejection):
            bad.append(mapped)
            continue
        # The career's own DATA_MOD: the newest of its joined rows (person and course may be newer).
        data_mod = max(row[stu] or EPOCH, row[anaper] or EPOCH, row[cds] or EPOCH)
        good.append((mapped, mapped.row_hash(), data_mod))
    return PreparedBatch(good, bad, newest)


def ingest_careers(
    engine: Engine,
    source: Esse3Source,
    ateneo: Ateneo,
    partition: Partition,
    *,
    today: dt.date | None = None,
    overlap: dt.timedelta = OVERLAP,
    future_skew: dt.timedelta = DEFAULT_FUTURE_SKEW,
    now: dt.datetime | None = None,
) -> CareerSyncResult:
    """Read the partition's changed careers (plus its quarantined ones) and apply them in ONE
    transaction together with the new watermarks, so a crash never leaves a watermark ahead of rows.
    Reading and validating the next batch runs in a thread while this one is written."""
    today = today or dt.date.today()
    cutoff = future_cutoff(now or dt.datetime.now(), future_skew)
    rules = CareerRules(ateneo.finalised, ateneo.closing_reasons)
    result = CareerSyncResult()
    seen: dict[str, dt.datetime] = {}
    institution = partition.institution

    def prepared(batches: Iterable[list[Row]]) -> Iterator[PreparedBatch]:
        return prefetch(prepare_batch(b, rules, today, cutoff) for b in batches)

    with engine.begin() as conn:
        open_keys = store.open_quarantine_keys(
            conn, institution, partition.academic_year, store.CAREERS_STAGE
        )
        watermarks = store.get_watermarks(conn, partition.key)
        for batch in prepared(source.changed_careers(partition.academic_year, watermarks, overlap)):
            _apply_batch(conn, partition, batch, result, seen, open_keys)
        # Quarantined rows are re-read even when their DATA_MOD did not move (see careers_by_id.sql);
        # a row whose key is not an integer can only come back when it changes.
        retry = sorted(int(k) for k in open_keys if k.isdigit())
        for batch in prepared(source.careers_by_id(partition.academic_year, retry)):
            _apply_batch(conn, partition, batch, result, seen, open_keys)
        # A quarantined career that vanished from Esse3 (deleted or moved year) is resolved too.
        vanished = {k for k in open_keys if k.isdigit()}
        store.resolve_quarantine(conn, institution, store.CAREERS_STAGE, "P01_STU", vanished)
        result.resolved += len(vanished)
        store.advance_watermarks(conn, partition.key, seen)
        if result.inserted + result.updated > BULK:
            refresh_statistics(conn, "careers", "quarantine")
    return result


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
    holders = store.matricola_holders(conn, partition.institution, (r.matricola for r, _, _ in batch.good))
    kept: list[tuple[CareerRecord, str, dt.datetime]] = []
    for record, row_hash, data_mod in batch.good:
        holder = holders.setdefault(record.matricola, record.stu_id)
        if holder != record.stu_id:
            bad.append(Rejection(record.stu_id, (f"duplicate matricola (also on STU_ID {holder})",)))
        else:
            kept.append((record, row_hash, data_mod))

    existing = store.existing_hashes(conn, partition.institution, [r.stu_id for r, _, _ in kept])
    inserted = [k for k in kept if k[0].stu_id not in existing]
    updated = [k for k in kept if k[0].stu_id in existing and existing[k[0].stu_id] != k[1]]
    result.inserted += len(inserted)
    result.updated += len(updated)
    result.unchanged += len(kept) - len(inserted) - len(updated)
    store.upsert_careers(conn, partition.institution, inserted, new=True)
    store.upsert_careers(conn, partition.institution, updated)

    store.quarantine(
        conn, partition.institution, partition.academic_year, store.CAREERS_STAGE, "P01_STU", bad
    )
    result.quarantined += len(bad)
    result.reasons.update(reason for rej in bad for reason in rej.reasons)
    good_keys = {str(r.stu_id) for r, _, _ in kept}
    cleared = good_keys & open_keys
    store.resolve_quarantine(conn, partition.institution, store.CAREERS_STAGE, "P01_STU", cleared)
    result.resolved += len(cleared)
    # Rows seen in this run are settled: either processed or (re)quarantined.
    open_keys.difference_update(good_keys | {str(r.stu_id) for r in bad})


NO_DUPLICATES = "no_duplicate_careers"
QUARANTINE_SHARE = "quarantine_share"


def build_careers_asset(partitions: MultiPartitionsDefinition) -> AssetsDefinition:
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
    def careers(context: AssetExecutionContext, esc: ResourceParam[Runtime]) -> MaterializeResult:
        runtime = esc
        partition = Partition.parse(context.partition_key)
        ateneo = runtime.settings.ateneo(partition.institution)
        with claim_partition(context, runtime.engine, partition.key):
            result = ingest_careers(
                runtime.engine,
                runtime.esse3(partition.institution),
                ateneo,
                partition,
                future_skew=runtime.settings.esse3_future_skew,
            )
        with runtime.engine.connect() as conn:
            counts = store.partition_counts(conn, partition.institution, partition.academic_year)
            dupes = store.duplicate_matricole(conn, partition.institution)
        total = counts["careers"] + counts["quarantined"]
        share = counts["quarantined"] / total if total else 0.0
        threshold = runtime.settings.quarantine_warn_share
        context.log.info(
            f"{partition.key}: {result.inserted} inserted, {result.updated} updated, "
            f"{result.unchanged} unchanged, {result.quarantined} quarantined, {result.resolved} resolved"
        )
        return MaterializeResult(
            metadata={
                "dagster/row_count": counts["careers"],
                "inserted": result.inserted,
                "updated": result.updated,
                "unchanged": result.unchanged,
                "quarantined": result.quarantined,
                "quarantine_resolved": result.resolved,
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
