"""`badges`: the Esse3 badges of a partition's careers, read incrementally (P01_BADGE watermark) into
the state DB; a row that cannot make a card is quarantined with its reason. `esc_cards` makes a card
of each."""
# No `from __future__ import annotations`: Dagster inspects the context annotation at runtime.

import datetime as dt
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from dagster import (
    AssetExecutionContext,
    AssetsDefinition,
    MaterializeResult,
    MultiPartitionsDefinition,
    ResourceParam,
    asset,
)
from sqlalchemy import Connection, Engine
from sqlalchemy.engine import Row

from etl.assets.careers import Gone
from etl.assets.claims import claim_partition
from etl.assets.step_retries import retry_transient
from etl.config import Settings
from etl.domain.badges import ReadBadge, badge_content, validate_badge
from etl.domain.careers import Rejection
from etl.domain.esse3_time import esse3_now, read_since
from etl.domain.source_drift import DriftKind, badge_digest, guard_reason
from etl.domain.source_reads import ReadPolicy
from etl.domain.source_values import future_cutoff, in_the_future, key_problem, quarantine_key
from etl.domain.states import QuarantineStage
from etl.errors import VanishHeld
from etl.partitions import Partition
from etl.resources.esse3 import Esse3Source
from etl.resources.esse3_sources import Esse3Sources
from etl.resources.state_db import StateDB
from etl.store import badges as store
from etl.store import careers as common
from etl.store import quarantine, source_state, watermarks
from etl.store.bulk import refresh_statistics

STAGE = QuarantineStage.BADGES
P01_BADGE = "P01_BADGE"


@dataclass
class BadgeSyncResult:
    read: int = 0
    quarantined: int = 0
    vanished: int = 0  # deleted from Esse3: flagged, their cards deactivated
    moved_in: int = 0  # came with their career (or to a career) from another academic year
    held: str | None = None


def _validated(batch: list[Row], year: int, cutoff: dt.datetime) -> tuple[list[ReadBadge], list[Rejection]]:
    good, bad = [], []
    counts = Counter(quarantine_key(row[0]) for row in batch)
    for row in batch:
        bdg_id, stu_id, pers_id, ini, fin, ann, printed, kind, data_mod = row
        reasons = [p for c, v in (("BDG_ID", bdg_id), ("STU_ID", stu_id), ("PERS_ID", pers_id))
                   if (p := key_problem(c, v))]  # fmt: skip
        if counts[quarantine_key(bdg_id)] > 1:
            reasons.append("duplicate BDG_ID (more than one badge row with this key)")
        if in_the_future(data_mod, cutoff):
            reasons.append("DATA_MOD in the future (P01_BADGE)")
        reasons += validate_badge(kind, ini, fin)
        if reasons:
            bad.append(Rejection(quarantine_key(bdg_id), tuple(reasons)))
        else:
            good.append(
                ReadBadge(
                    int(bdg_id),
                    int(stu_id),
                    int(pers_id),
                    year,
                    ini,
                    fin,
                    bool(ann),
                    printed,
                    kind,
                    data_mod,
                    badge_digest(row),
                )
            )
    return good, bad


def ingest_badges(
    engine: Engine,
    source: Esse3Source,
    partition: Partition,
    policy: ReadPolicy = ReadPolicy(),
    now: dt.datetime | None = None,
) -> BadgeSyncResult:
    """Badges of the partition changed since its P01_BADGE watermark (and whatever the sweep or a moved
    row count says the window missed), in one transaction with it. Quarantine keys are BDG_IDs (their
    text when not an integer). A badge whose keys are not exact integers, whose BDG_ID appears twice,
    or whose DATA_MOD lies in the future is quarantined; a future DATA_MOD never reaches the watermark.
    Raises ``VanishHeld`` (after committing the rest) when the guard holds a mass deletion."""
    result = BadgeSyncResult()
    newest: dt.datetime | None = None
    inst, year = partition.institution, partition.academic_year
    cutoff = future_cutoff(now or esse3_now(policy.zone), policy.future_skew)
    with engine.begin() as conn:

        def apply(batches: Iterable[list[Row]]) -> set[Any]:
            nonlocal newest
            returned: set[Any] = set()
            for batch in batches:
                for data_mod in (row[8] for row in batch):
                    if data_mod is not None and not in_the_future(data_mod, cutoff):
                        newest = data_mod if newest is None or data_mod > newest else newest
                good, bad = _validated(batch, year, cutoff)
                _write(conn, inst, year, good, result)
                quarantine.record(conn, inst, year, STAGE, P01_BADGE, bad)
                quarantine.resolve(conn, inst, STAGE, P01_BADGE, (str(g.bdg_id) for g in good))
                result.read += len(batch)
                result.quarantined += len(bad)
                returned.update(row[0] for row in batch)
            return returned

        mark = watermarks.get_watermarks(conn, partition.key).get(P01_BADGE)
        since = None if mark is None else read_since(mark, policy.overlap, policy.zone)
        read = apply(source.changed_badges(year, since))
        gone = _complete(conn, source, partition, apply, read)
        result.vanished, result.held = _apply_vanished(conn, partition, policy, gone)
        if newest is not None:
            watermarks.advance_watermarks(conn, partition.key, {P01_BADGE: newest})
        refresh_statistics(conn, "badges", "cards", "persons", written=result.read)
    if result.held:
        raise VanishHeld(
            f"{partition.key}: {result.held}: nothing deactivated; once a person has looked, "
            "`esc-sync reconcile --repair --confirm-vanished` applies it"
        )
    return result


def _write(conn: Connection, inst: str, year: int, good: list[ReadBadge], result: BadgeSyncResult) -> None:
    existing = store.existing_badges(conn, inst, [b.bdg_id for b in good])
    changed, digests, moved, other_career = [], [], [], []
    for b in good:
        old = existing.get(b.bdg_id)
        if old is None or old.vanished or old.content != badge_content(b):
            changed.append(b)
            if old is not None and old.academic_year != year:
                moved.append(b.bdg_id)
            if old is not None and old.stu_id != b.stu_id:
                other_career.append((b.bdg_id, b.stu_id))
        elif old.source_digest != b.digest:
            digests.append((b.bdg_id, b.digest))
    store.upsert_badges(conn, inst, changed)
    common.refresh_digests(conn, "badges", inst, digests)
    store.follow_badge_careers(conn, inst, other_career)
    source_state.move_badges(conn, inst, year, moved)
    result.moved_in += len(moved)


def _complete(
    conn: Connection,
    source: Esse3Source,
    partition: Partition,
    apply: Callable[[Iterable[list[Row]]], set[Any]],
    read: set[Any],
) -> Gone:
    """As for careers (etl.assets.careers._complete): the sweep's findings, and the keys compared when
    Esse3's badge count of the partition moved; quarantined badges are re-read by the next change."""
    inst, year = partition.institution, partition.academic_year
    found = source_state.findings(conn, inst, year, P01_BADGE)
    reread = {k for k, kind in found.items() if kind is not DriftKind.VANISHED}
    candidates = set(found) - reread
    local = common.partition_keys(conn, "badges", inst, year)
    counted = source.count_of_year(P01_BADGE, year)
    compared = counted != watermarks.get_row_counts(conn, partition.key).get(P01_BADGE)
    if compared or source_state.get_hold(conn, partition.key, P01_BADGE):
        keys = source.keys_of_year(P01_BADGE, year)
        counted = len(keys)
        exact = {int(k) for k in keys if key_problem("BDG_ID", k) is None}
        reread |= exact - local
        candidates |= local - exact
        compared = True
    returned = apply(source.badges_by_id(year, sorted(reread - read))) | (reread & read)
    candidates = (candidates | (reread - returned)) & local
    deleted: list[int] = []
    if candidates:
        now_in = source.years_of(P01_BADGE, sorted(candidates))
        apply(source.badges_by_id(year, sorted(k for k, y in now_in.items() if y == year)))
        # A badge whose career is gone from Esse3 (year None) makes no card any more: deleted too.
        deleted = sorted(k for k in candidates if now_in.get(k, None) is None)
    if compared:
        watermarks.set_row_count(conn, partition.key, P01_BADGE, counted)
    source_state.clear_findings(conn, inst, P01_BADGE, found)
    return Gone(deleted, counted, len(local))


def _apply_vanished(
    conn: Connection, partition: Partition, policy: ReadPolicy, gone: Gone
) -> tuple[int, str | None]:
    held = source_state.get_hold(conn, partition.key, P01_BADGE)
    # Badges of careers deleted from Esse3 went with them: the careers' guard has counted those already.
    alone = len(gone.deleted) - len(
        store.badges_of_vanished_careers(conn, partition.institution, gone.deleted)
    )
    reason = guard_reason("badges", alone, gone.total, policy.max_vanished_share, gone.source_rows)
    if reason and not (held and held.confirmed):
        source_state.hold(
            conn, partition.institution, partition.key, P01_BADGE, len(gone.deleted), gone.total, reason
        )
        return 0, reason
    if held:
        source_state.release_hold(conn, partition.key, P01_BADGE)
    common.mark_vanished(conn, "badges", partition.institution, gone.deleted)
    return len(gone.deleted), None


def build_badges_asset(partitions: MultiPartitionsDefinition, settings: Settings) -> AssetsDefinition:
    @asset(
        name="badges",
        partitions_def=partitions,
        deps=["careers"],
        group_name="esse3",
        kinds={"sql"},
        description="Esse3 badges (P01_BADGE) of the partition's careers, validated; bad rows quarantined.",
    )
    @retry_transient(settings)
    def badges(
        context: AssetExecutionContext, state_db: ResourceParam[StateDB], esse3: ResourceParam[Esse3Sources]
    ) -> MaterializeResult:
        partition = Partition.parse(context.partition_key)
        ateneo = settings.ateneo(partition.institution)
        with claim_partition(context, state_db.engine, partition.key):
            result = ingest_badges(state_db.engine, esse3.of(ateneo.code), partition, settings.read_policy)
        with state_db.engine.connect() as conn:
            total = store.count_badges(conn, ateneo.code, partition.academic_year)
        return MaterializeResult(
            metadata={
                "dagster/row_count": total,
                "read": result.read,
                "quarantined": result.quarantined,
                "vanished": result.vanished,
                "moved_in": result.moved_in,
            }
        )

    return badges
