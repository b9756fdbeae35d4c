"""The `export_files` asset: vendor exports (Parquet + ZIP) of one academic year × university under
``<home>/exports/<institution>/<year>/``, full snapshots and incrementals, with a manifest row each.

Rules (pure functions below, the asset only carries them out):
- **Full** when the partition has no ready full export, when an export is marked ``rebuild`` (the new
  full supersedes it: it is expired, never rewritten under its id, because the past state it held can
  not be reconstructed), when the newest full is older than ``full_every`` (one a day by default: it
  also bounds the incremental chain a new vendor must replay), or when more than
  ``full_changed_share`` of the cards changed (an incremental that large is a full in all but name).
- Otherwise **incremental**: the cards whose change time is after the newest export's ``until``;
  nothing changed → no export.
- **Intent then confirm**: both files are written atomically under their final names first, then the
  manifest row is committed. A crash in between leaves files without a row, which the next run deletes
  (it sweeps the directory under a lock first); never a row pointing at nothing.
- **Retention**: the newest ``retention_full`` ready full exports, and every export after the oldest
  of them, are kept; older rows become ``expired`` (kept for the audit trail) and their files deleted.
"""
# No `from __future__ import annotations`: Dagster inspects the context annotation at runtime.

import datetime as dt
import fcntl
import logging
import re
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
from sqlalchemy.engine import Row

from etl.assets.automation import FOLLOWS_CARDS
from etl.assets.step_retries import retry_transient
from etl.config import Settings
from etl.domain.export_plan import ExportInfo, ExportPlan, chain_since, expired_by_retention, plan_export
from etl.domain.export_policy import ExportPolicy
from etl.domain.states import ExportKind, ExportStatus
from etl.exports import ExportFiles, ExportRow, InvalidRowError, validate_row, write_export
from etl.partitions import Partition
from etl.resources.state_db import StateDB
from etl.store import exports as store
from etl.store.models import utcnow

log = logging.getLogger(__name__)

LOCK_NAME = ".export.lock"
_KIND_TAG = {ExportKind.FULL: "full", ExportKind.INCREMENTAL: "incr"}


# --- policy (settings) ---------------------------------------------------------------------------------


# --- pure rules ----------------------------------------------------------------------------------------


def export_id(partition: Partition, kind: ExportKind, at: dt.datetime) -> str:
    """``<institution>-<year>-<full|incr>-<UTC timestamp to the microsecond>``: sorts by time, and
    is a valid file name (the institution code is ``[a-z0-9_-]``)."""
    return f"{partition.institution}-{partition.academic_year}-{_KIND_TAG[kind]}-{at:%Y%m%dT%H%M%S%f}Z"


def export_directory(home: Path, partition: Partition) -> Path:
    return Path(home) / "exports" / partition.institution / str(partition.academic_year)


def _id_pattern(partition: Partition) -> re.Pattern[str]:
    return re.compile(
        rf"{re.escape(partition.institution)}-{partition.academic_year}-(full|incr)-\d{{8}}T\d{{12}}Z"
    )


def export_rows(
    rows: Iterable[Row | Sequence[Any]],
    *,
    university: str,
    pic: str,
    academic_year: int,
    skipped: dict[str, str] | None = None,
) -> Iterator[ExportRow]:
    """``store.exportable_rows`` → ``ExportRow``. With ``skipped``, each row is validated here and a row
    the writer would refuse is left out and noted (ESCN → reason, never the personal data)."""
    for escn, matricola, first, last, esi, card_type, issued, expires, status, payload, png, svg in rows:
        row = ExportRow(
            university=university,
            pic=pic,
            academic_year=academic_year,
            matricola=matricola,
            full_name=f"{first or ''} {last or ''}".strip(),
            esi=esi,
            escn=escn,
            card_type=card_type,
            issued_at=issued,
            expires_at=expires,
            status=status,
            qr_payload=payload,
            qr_png=png,
            qr_svg=svg,
        )
        if skipped is not None:
            try:
                validate_row(row)
            except (InvalidRowError, TypeError) as exc:
                skipped[str(escn)] = str(exc)
                continue
        yield row


# --- files ---------------------------------------------------------------------------------------------


def files_intact(export: ExportInfo) -> bool:
    """Both files exist with their recorded sizes. A stat, not a hash: cheap enough for every run; the
    REST API verifies the SHA-256 when it serves a file and marks a mismatch ``rebuild``."""
    try:
        return (
            Path(export.parquet_path).stat().st_size == export.parquet_bytes
            and Path(export.zip_path).stat().st_size == export.zip_bytes
        )
    except OSError:
        return False


def sweep_orphans(directory: Path, partition: Partition, live_ids: set[str]) -> list[str]:
    """Delete export files without a live manifest row (a crash before the confirm, or an expired export
    whose deletion was interrupted) and leftover writer temporaries. Other files are left alone."""
    pattern = _id_pattern(partition)
    removed = []
    for path in sorted(directory.iterdir()):
        name = path.name
        temporary = name.startswith(".") and name.endswith(".part")
        orphan = (
            path.suffix in (".parquet", ".zip") and pattern.fullmatch(path.stem) and path.stem not in live_ids
        )
        if (temporary or orphan) and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(name)
    return removed


def _delete_files(exports: Iterable[ExportInfo]) -> None:
    for e in exports:
        for path in (e.parquet_path, e.zip_path):
            if path:
                Path(path).unlink(missing_ok=True)


@contextmanager
def _partition_lock(directory: Path) -> Iterator[None]:
    """One export run per partition at a time (the sweep must never see another run's unconfirmed
    files). An flock: released by the kernel if the process dies."""
    with open(directory / LOCK_NAME, "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# --- the work ------------------------------------------------------------------------------------------


@dataclass
class ExportRunResult:
    plan: ExportPlan
    export_id: str | None = None
    rows: int = 0
    parquet_bytes: int = 0
    zip_bytes: int = 0
    seconds: float = 0.0
    registered: int = 0
    exportable: int = 0
    changed: int = 0
    skipped: dict[str, str] = field(default_factory=dict)
    marked_rebuild: list[str] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)
    orphans_removed: list[str] = field(default_factory=list)

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


def export_partition(
    engine: Engine,
    partition: Partition,
    *,
    home: Path,
    pic: str,
    policy: ExportPolicy | None = None,
    now: dt.datetime | None = None,
) -> ExportRunResult:
    """Sweep, check, plan, write, confirm, expire: one partition's export run (see the module doc)."""
    policy = policy or ExportPolicy()
    institution, year = partition.institution, partition.academic_year
    directory = export_directory(home, partition)
    directory.mkdir(parents=True, exist_ok=True)
    with _partition_lock(directory):
        with engine.connect() as conn:
            live = store.partition_exports(conn, institution, year)
        orphans = sweep_orphans(directory, partition, {e.id for e in live})

        broken = [e.id for e in live if e.status == ExportStatus.READY and not files_intact(e)]
        if broken:
            log.warning("exports %s: files missing or truncated, marked for rebuild", ", ".join(broken))
            with engine.begin() as conn:
                store.set_status(conn, broken, ExportStatus.REBUILD, only_from=(ExportStatus.READY,))

        with engine.begin() as conn:
            analysed = store.refresh_planner_stats(conn)
        if analysed:
            log.info("planner statistics refreshed: %s", ", ".join(analysed))
        now = now or utcnow()
        with engine.connect() as conn:
            live = store.partition_exports(conn, institution, year)
            since = chain_since(live)
            registered, total, changed = store.change_counts(conn, institution, year, since)
        plan = plan_export(live, total=total, changed=changed, now=now, policy=policy)
        result = ExportRunResult(
            plan,
            registered=registered,
            exportable=total,
            changed=changed,
            marked_rebuild=broken,
            orphans_removed=orphans,
        )
        if plan.kind is not None:
            _write(engine, partition, directory, pic, plan, now, result)

        with engine.connect() as conn:
            live = store.partition_exports(conn, institution, year)
        expired = set(expired_by_retention(live, policy.retention_full))
        if expired:
            with engine.begin() as conn:
                store.set_status(conn, expired, ExportStatus.EXPIRED)
            # After the commit: a row never points at nothing.
            _delete_files(e for e in live if e.id in expired)
        result.expired.extend(sorted(expired))
    return result


def _write(
    engine: Engine,
    partition: Partition,
    directory: Path,
    pic: str,
    plan: ExportPlan,
    now: dt.datetime,
    result: ExportRunResult,
) -> None:
    institution, year = partition.institution, partition.academic_year
    start = time.perf_counter()
    with engine.connect() as conn:
        new_id = export_id(partition, plan.kind or ExportKind.FULL, now)
        while store.export_exists(conn, new_id):  # two runs in one microsecond: only in tests
            now += dt.timedelta(microseconds=1)
            new_id = export_id(partition, plan.kind or ExportKind.FULL, now)

    def write(skipped: dict[str, str] | None) -> ExportFiles:
        with engine.connect() as conn:
            rows = store.exportable_rows(conn, institution, year, plan.since, now)
            mapped = export_rows(rows, university=institution, pic=pic, academic_year=year, skipped=skipped)
            return write_export(mapped, directory, new_id)

    # The writer validates every row and refuses a bad one. Validating here too would double that cost
    # (~2 s per 100,000 cards), so the common case writes straight; an export that hits a bad row is
    # written again, leaving out (and reporting) every invalid row. The failed attempt leaves no file.
    try:
        files = write(None)
    except InvalidRowError:
        files = write(result.skipped)
    # Confirm: only now does the export exist for the API. A crash before this commit leaves two files
    # that the next run's sweep deletes.
    with engine.begin() as conn:
        store.insert_export(
            conn,
            files,
            institution=institution,
            academic_year=year,
            kind=plan.kind or ExportKind.FULL,
            since=plan.since,
            until=now,
        )
        superseded = [e for e in store.partition_exports(conn, institution, year) if e.id in plan.supersedes]
        store.set_status(conn, plan.supersedes, ExportStatus.EXPIRED)
    _delete_files(superseded)
    result.expired.extend(e.id for e in superseded)
    result.export_id = new_id
    result.rows = files.parquet.rows
    result.parquet_bytes = files.parquet.size_bytes
    result.zip_bytes = files.zip.size_bytes
    result.seconds = time.perf_counter() - start


# --- the asset -----------------------------------------------------------------------------------------


def build_export_asset(partitions: MultiPartitionsDefinition, settings: Settings) -> AssetsDefinition:
    @asset(
        name="export_files",
        partitions_def=partitions,
        automation_condition=FOLLOWS_CARDS,
        deps=["qr_images"],
        group_name="exports",
        kinds={"parquet"},
        description="Vendor exports (Parquet + ZIP of QR images), full and incremental, with retention.",
    )
    @retry_transient(settings)
    def export_files(context: AssetExecutionContext, state_db: ResourceParam[StateDB]) -> MaterializeResult:
        partition = Partition.parse(context.partition_key)
        result = export_partition(
            state_db.engine,
            partition,
            home=settings.home,
            pic=settings.ateneo(partition.institution).pic,
            policy=ExportPolicy.from_settings(settings),
        )
        written = (
            f"{result.plan.kind} export {result.export_id}: {result.rows} cards in {result.seconds:.1f} s"
            if result.export_id
            else "no export written"
        )
        context.log.info(
            f"{partition.key}: {written} ({result.plan.reason}); {len(result.skipped)} cards skipped, "
            f"{len(result.expired)} exports expired, {len(result.orphans_removed)} orphan files removed"
        )
        return MaterializeResult(
            metadata={
                "dagster/row_count": result.rows,
                "export_id": result.export_id or "",
                "kind": str(result.plan.kind or "none"),  # plain text: Dagster serialises no foreign enum
                "reason": result.plan.reason,
                "registered_cards": result.registered,
                "exportable_cards": result.exportable,
                "not_exportable": result.registered - result.exportable,  # no QR or no career yet
                "changed_cards": result.changed,
                "skipped_invalid": len(result.skipped),
                # Reasons and counts only: an ESCN leads to a name through the Router's public status.
                "skipped_reasons": MetadataValue.json(dict(Counter(result.skipped.values()).most_common(10))),
                "parquet_bytes": result.parquet_bytes,
                "zip_bytes": result.zip_bytes,
                "seconds": round(result.seconds, 3),
                "rows_per_second": round(result.rows_per_second, 1),
                "marked_rebuild": MetadataValue.json(result.marked_rebuild),
                "expired": MetadataValue.json(result.expired),
                "orphan_files_removed": len(result.orphans_removed),
            }
        )

    return export_files
