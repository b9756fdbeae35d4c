"""`badges`: the Esse3 badges of a partition's careers, read incrementally (P01_BADGE watermark) into
the state DB; a row that cannot make a card is quarantined with its reason. `esc_cards` makes a card
of each."""
# No `from __future__ import annotations`: Dagster inspects the context annotation at runtime.

import datetime as dt
from collections import Counter

from dagster import (
    AssetExecutionContext,
    AssetsDefinition,
    MaterializeResult,
    MultiPartitionsDefinition,
    ResourceParam,
    asset,
)
from sqlalchemy import Engine

from etl.assets.claims import claim_partition
from etl.domain.badges import validate_badge
from etl.domain.careers import Rejection
from etl.domain.source_values import (
    DEFAULT_FUTURE_SKEW,
    future_cutoff,
    in_the_future,
    key_problem,
    quarantine_key,
)
from etl.partitions import Partition
from etl.resources.esse3 import Esse3Source
from etl.resources.runtime import Runtime
from etl.store import careers as common
from etl.store import router_state as store
from etl.store.bulk import refresh_statistics
from etl.store.models import utcnow

STAGE = "badges"
CHUNK = 1000
OVERLAP = dt.timedelta(minutes=10)


def ingest_badges(
    engine: Engine,
    source: Esse3Source,
    partition: Partition,
    future_skew: dt.timedelta = DEFAULT_FUTURE_SKEW,
    now: dt.datetime | None = None,
) -> tuple[int, int]:
    """Badges of the partition changed since its P01_BADGE watermark, in one transaction with it.
    Returns (read, quarantined). Quarantine keys are BDG_IDs (their text when not an integer). A badge
    whose keys are not exact integers, whose BDG_ID appears twice, or whose DATA_MOD lies in the
    future is quarantined; a future DATA_MOD never reaches the watermark."""
    read = rejected = 0
    newest: dt.datetime | None = None
    inst, year = partition.institution, partition.academic_year
    cutoff = future_cutoff(now or dt.datetime.now(), future_skew)
    with engine.begin() as conn:
        since = common.get_watermarks(conn, partition.key).get("P01_BADGE")
        for batch in source.changed_badges(year, since, OVERLAP):
            good, bad = [], []
            now_utc = utcnow()
            counts = Counter(quarantine_key(row[0]) for row in batch)
            for bdg_id, stu_id, pers_id, ini, fin, ann, printed, kind, data_mod in batch:
                future = in_the_future(data_mod, cutoff)
                if data_mod is not None and not future:
                    newest = data_mod if newest is None or data_mod > newest else newest
                reasons = [p for c, v in (("BDG_ID", bdg_id), ("STU_ID", stu_id), ("PERS_ID", pers_id))
                           if (p := key_problem(c, v))]  # fmt: skip
                if counts[quarantine_key(bdg_id)] > 1:
                    reasons.append("duplicate BDG_ID (more than one badge row with this key)")
                if future:
                    reasons.append("DATA_MOD in the future (P01_BADGE)")
                reasons += validate_badge(kind, ini, fin)
                if reasons:
                    bad.append(Rejection(quarantine_key(bdg_id), tuple(reasons)))
                else:
                    good.append(
                        (
                            inst,
                            bdg_id,
                            stu_id,
                            pers_id,
                            year,
                            ini,
                            fin,
                            bool(ann),
                            printed,
                            kind,
                            data_mod,
                            now_utc,
                        )
                    )
            store.upsert_badges(conn, good)
            common.quarantine(conn, inst, year, STAGE, "P01_BADGE", bad)
            common.resolve_quarantine(conn, inst, STAGE, "P01_BADGE", (str(g[1]) for g in good))
            read += len(batch)
            rejected += len(bad)
        if newest is not None:
            common.advance_watermarks(conn, partition.key, {"P01_BADGE": newest})
        if read > CHUNK // 2:
            refresh_statistics(conn, "badges", "cards", "persons")
    return read, rejected


def build_badges_asset(partitions: MultiPartitionsDefinition) -> AssetsDefinition:
    @asset(
        name="badges",
        partitions_def=partitions,
        deps=["careers"],
        group_name="esse3",
        kinds={"sql"},
        description="Esse3 badges (P01_BADGE) of the partition's careers, validated; bad rows quarantined.",
    )
    def badges(context: AssetExecutionContext, esc: ResourceParam[Runtime]) -> MaterializeResult:
        runtime = esc
        partition = Partition.parse(context.partition_key)
        ateneo = runtime.settings.ateneo(partition.institution)
        with claim_partition(context, runtime.engine, partition.key):
            read, rejected = ingest_badges(
                runtime.engine, runtime.esse3(ateneo.code), partition, runtime.settings.esse3_future_skew
            )
        with runtime.engine.connect() as conn:
            total = store.count_badges(conn, ateneo.code, partition.academic_year)
        return MaterializeResult(metadata={"dagster/row_count": total, "read": read, "quarantined": rejected})

    return badges
