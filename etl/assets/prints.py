"""`badge_sheets`: for universities that print physical badges, one PDF per university × academic year
with every active printed (PASSIVE) card laid out on A4 with crop marks, ready for the card printer.
Rewritten only when what would be printed changed; written atomically."""
# No `from __future__ import annotations`: Dagster inspects the context annotation at runtime.

import datetime as dt
from pathlib import Path

from dagster import (
    AssetExecutionContext,
    AssetsDefinition,
    MaterializeResult,
    MetadataValue,
    MultiPartitionsDefinition,
    ResourceParam,
    asset,
)
from sqlalchemy import Engine

from etl.assets.automation import FOLLOWS_CARDS
from etl.assets.step_retries import retry_transient
from etl.config import Settings
from etl.domain.prints import printable, sheet_digest
from etl.files import write_atomically
from etl.partitions import Partition
from etl.render.badge_source import badge_view, qr_images
from etl.render.logo import load_logo
from etl.resources.state_db import StateDB
from etl.store.qr import print_candidates


def sheets_dir(settings: Settings, partition: Partition) -> Path:
    return settings.home / "prints" / partition.institution / str(partition.academic_year)


def write_badge_sheets(
    engine: Engine, settings: Settings, partition: Partition, today: dt.date | None = None
) -> tuple[Path | None, int]:
    """Returns (the PDF, cards in it); (None, 0) when nothing is printable. The file name carries a
    digest of its content so an unchanged partition is not rewritten."""
    today = today or dt.date.today()
    ateneo = settings.ateneo(partition.institution)
    with engine.connect() as conn:
        rows = print_candidates(conn, ateneo.code, partition.academic_year)
    views = [
        (
            badge_view(r, ateneo.name, settings.qr_base_url, today),
            qr_images(r.escn, settings.qr_base_url, r.payload, r.png, r.svg).png,
        )
        for r in rows
        if printable(r.card_type, r.desired_status, r.expires_at, today)
    ]
    if not views:
        return None, 0
    digest = sheet_digest((v.escn, v.full_name, v.expires_at, v.status) for v, _ in views)
    folder = sheets_dir(settings, partition)
    target = folder / f"badges-{partition.institution}-{partition.academic_year}-{digest}.pdf"
    if target.exists():
        return target, len(views)
    folder.mkdir(parents=True, exist_ok=True)
    logo = load_logo(settings.logo_path)
    from etl.render.badge_pdf import render_badge_sheet_pdf  # fpdf2: a tenth of every run's start-up

    pdf = render_badge_sheet_pdf(views, logo_png=logo.data if logo.kind == "png" else None)
    write_atomically(target, pdf)
    for old in folder.glob("badges-*.pdf"):  # only the current sheet is kept
        if old != target:
            old.unlink()
    return target, len(views)


def build_prints_asset(partitions: MultiPartitionsDefinition, settings: Settings) -> AssetsDefinition:
    @asset(
        name="badge_sheets",
        partitions_def=partitions,
        automation_condition=FOLLOWS_CARDS,
        deps=["qr_images"],
        group_name="exports",
        kinds={"pdf"},
        description="A4 sheets (ID-1 cards, crop marks) of the active printed badges, for universities "
        "that print physical badges.",
    )
    @retry_transient(settings)
    def badge_sheets(context: AssetExecutionContext, state_db: ResourceParam[StateDB]) -> MaterializeResult:
        partition = Partition.parse(context.partition_key)
        if not settings.ateneo(partition.institution).prints_physical_badges:
            return MaterializeResult(metadata={"cards": 0, "skipped": "university does not print badges"})
        path, cards = write_badge_sheets(state_db.engine, settings, partition)
        return MaterializeResult(
            metadata={"cards": cards, "path": MetadataValue.path(str(path)) if path else "none"}
        )

    return badge_sheets
