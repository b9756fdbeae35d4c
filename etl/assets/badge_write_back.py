"""`esse3_badge_write_back`: each registered card's ESCN, QR payload and Router status (and, where the
site wants it, the QR image) written onto its Esse3 badge, so Esse3's own virtual badge and badge
printing show the card. Only changed badges are written; a badge that carries another ESCN is
quarantined, never overwritten."""
# No `from __future__ import annotations`: Dagster inspects the context annotation at runtime.

from dagster import (
    AssetExecutionContext,
    AssetsDefinition,
    MaterializeResult,
    MultiPartitionsDefinition,
    ResourceParam,
    asset,
)
from sqlalchemy import Engine

from etl.assets.automation import FOLLOWS_CARDS
from etl.assets.claims import claim_partition
from etl.assets.step_retries import retry_transient
from etl.config import Ateneo, Settings
from etl.domain.badges import unwritten
from etl.domain.careers import Rejection
from etl.domain.states import QuarantineStage
from etl.partitions import Partition
from etl.resources.esse3 import Esse3Source
from etl.resources.esse3_sources import Esse3Sources
from etl.resources.state_db import StateDB
from etl.store import badge_write_back as store
from etl.store import quarantine

STAGE = QuarantineStage.BADGE_WRITE_BACK


def write_back_badges(
    engine: Engine, source: Esse3Source, ateneo: Ateneo, partition: Partition
) -> dict[str, int]:
    inst, year = ateneo.code, partition.academic_year
    with engine.begin() as conn:
        wanted = store.pending(conn, inst, year, with_png=ateneo.write_back_qr_png)
        store.record_intents(conn, inst, wanted)  # recorded before: after a crash the number is still ours
    carried = source.write_back_badges(wanted, with_png=ateneo.write_back_qr_png)
    problems = unwritten(wanted, carried)
    written = [w for w in wanted if w.bdg_id not in problems]
    with engine.begin() as conn:
        store.record_written(conn, inst, written)
        if problems:
            store.forget(conn, inst, problems)
        rejected = [Rejection(bdg_id, (reason,)) for bdg_id, reason in problems.items()]
        quarantine.record(conn, inst, year, STAGE, "P01_BADGE", rejected)
        quarantine.resolve(conn, inst, STAGE, "P01_BADGE", (str(w.bdg_id) for w in written))
        carrying = store.count_written(conn, inst, year)
    return {"written": len(written), "quarantined": len(problems), "badges_carrying_escn": carrying}


def build_badge_write_back_asset(
    partitions: MultiPartitionsDefinition, settings: Settings
) -> AssetsDefinition:
    @asset(
        name="esse3_badge_write_back",
        partitions_def=partitions,
        automation_condition=FOLLOWS_CARDS,
        deps=["esc_cards", "qr_images"],
        group_name="esse3_write_back",
        kinds={"sql"},
        description="ESCN, QR payload and Router status (optionally the QR PNG) stored on each Esse3 badge.",
    )
    @retry_transient(settings)
    def esse3_badge_write_back(
        context: AssetExecutionContext, state_db: ResourceParam[StateDB], esse3: ResourceParam[Esse3Sources]
    ) -> MaterializeResult:
        partition = Partition.parse(context.partition_key)
        ateneo = settings.ateneo(partition.institution)
        if not ateneo.write_back_badge:
            return MaterializeResult(metadata={"enabled": False})
        with claim_partition(context, state_db.engine, partition.key):
            counts = write_back_badges(state_db.engine, esse3.of(ateneo.code), ateneo, partition)
        context.log.info(f"{partition.key}: {counts}")
        return MaterializeResult(metadata={"enabled": True, **counts})

    return esse3_badge_write_back
