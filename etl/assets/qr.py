"""The `qr_images` asset: the QR symbol (PNG + SVG) of every registered card of one academic year ×
university, kept in the state DB beside the card. A symbol is rendered only when it is missing or its
payload (``<base URL><ESCN>``) differs from the stored one, so a second run renders nothing."""
# No `from __future__ import annotations`: Dagster inspects the context annotation at runtime.

import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing import current_process

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
from sqlalchemy import Engine

from etl.assets.automation import FOLLOWS_CARDS
from etl.assets.step_retries import retry_transient
from etl.config import Settings
from etl.errors import ConfigError
from etl.partitions import Partition
from etl.render.qr import (
    QrImages,
    _available_cores,  # the same process policy as render_many: cores, never plain fork
    _pool_context,
    qr_payload,
    render_many,
    render_qr,
)
from etl.resources.state_db import StateDB
from etl.store import qr as store
from etl.store.models import utcnow

# Rendered images are held one chunk at a time (~4.5 KB each): memory stays flat for any partition,
# and each chunk is committed on its own, so a crash loses at most one chunk of work.
CHUNK = 4000
_PROBE_ESCN = "c3ddd400-d3ef-103e-9234-001999978433"  # every ESCN has this length: a payload probe
POOL_MIN = 2000  # below this a pool's start costs more than it saves (as in render_many)
_TASK = 250  # payloads per task sent to a worker


@dataclass
class QrRunResult:
    registered: int = 0
    rendered: int = 0
    unchanged: int = 0
    removed: int = 0  # symbols of cards that no longer exist
    failed: dict[str, str] = field(default_factory=dict)  # ESCN → reason (no personal data)
    seconds: float = 0.0

    @property
    def per_second(self) -> float:
        return self.rendered / self.seconds if self.seconds > 0 else 0.0


def check_base_url(base_url: str) -> None:
    """Fail fast (a configuration error, not per card) when ``<base><ESCN>`` cannot be a version 4-M
    symbol: every card of every partition would fail the same way."""
    try:
        render_qr(qr_payload(_PROBE_ESCN, base_url))
    except ValueError as exc:
        raise ConfigError(f"qr: field base_url: {exc}") from None


@contextmanager
def _renderer(workers: int | None, total: int) -> Iterator[Callable[[Sequence[str]], list[QrImages]]]:
    """A ``render_many`` that keeps ONE process pool for the whole run. ``render_many`` starts a pool per
    call, and every worker start re-imports the parent's main module (under Dagster, its CLI: seconds
    of CPU per worker): per chunk, that made the 100,000-card benchmark ~3x slower."""
    if workers is None:
        workers = _available_cores() if total >= POOL_MIN else 1
    if workers < 1:
        raise ValueError(f"workers must be >= 1, not {workers!r}")
    if workers == 1 or current_process().daemon:  # a daemonic process may not start children
        yield lambda payloads: render_many(payloads, workers=1)
        return
    with ProcessPoolExecutor(max_workers=workers, mp_context=_pool_context()) as pool:
        yield lambda payloads: list(pool.map(render_qr, payloads, chunksize=_TASK))


def render_partition_qr(
    engine: Engine,
    partition: Partition,
    base_url: str,
    *,
    chunk: int = CHUNK,
    workers: int | None = None,
) -> QrRunResult:
    """Render and store the missing or outdated symbols of ``partition``'s registered cards."""
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, not {chunk!r}")
    check_base_url(base_url)
    start = time.perf_counter()
    institution, year = partition.institution, partition.academic_year
    result = QrRunResult()
    with engine.connect() as conn:
        stale = store.stale_escns(conn, institution, year, base_url)
        result.registered, current = store.qr_counts(conn, institution, year, base_url)
    result.unchanged = current
    with _renderer(workers, len(stale)) as render:
        for i in range(0, len(stale), chunk):
            todo: list[tuple[str, str]] = []
            for escn in stale[i : i + chunk]:
                try:
                    todo.append((escn, qr_payload(escn, base_url)))
                except ValueError as exc:  # a malformed ESCN: reported, the rest goes on
                    result.failed[escn] = str(exc)
            images = render([payload for _, payload in todo])
            rows = [(e, img.payload, img.png, img.svg) for (e, _), img in zip(todo, images, strict=True)]
            with engine.begin() as conn:
                store.upsert_images(conn, institution, year, rows, utcnow())
            result.rendered += len(rows)
    with engine.begin() as conn:
        result.removed = store.delete_orphans(conn, institution, year)
    result.seconds = time.perf_counter() - start
    return result


QR_COMPLETE = "qr_complete"


def build_qr_asset(partitions: MultiPartitionsDefinition, settings: Settings) -> AssetsDefinition:
    @asset(
        name="qr_images",
        partitions_def=partitions,
        automation_condition=FOLLOWS_CARDS,
        deps=["esc_cards"],
        group_name="exports",
        kinds={"python", "sql"},
        description="QR symbols (version 4-M, PNG + SVG) of the registered cards, in the state DB.",
        check_specs=[
            AssetCheckSpec(
                QR_COMPLETE, asset="qr_images", description="Every registered card has a current QR."
            )
        ],
    )
    @retry_transient(settings)
    def qr_images(context: AssetExecutionContext, state_db: ResourceParam[StateDB]) -> MaterializeResult:
        partition = Partition.parse(context.partition_key)
        base_url = settings.qr_base_url
        result = render_partition_qr(state_db.engine, partition, base_url)
        with state_db.engine.connect() as conn:
            registered, current = store.qr_counts(
                conn, partition.institution, partition.academic_year, base_url
            )
        context.log.info(
            f"{partition.key}: {result.rendered} QR rendered, {result.unchanged} unchanged, "
            f"{len(result.failed)} failed, {result.removed} removed in {result.seconds:.1f} s"
        )
        # Reasons and counts only: an ESCN leads to a name through the Router's public status.
        failed = dict(Counter(result.failed.values()).most_common(10))
        return MaterializeResult(
            metadata={
                "dagster/row_count": current,
                "rendered": result.rendered,
                "unchanged": result.unchanged,
                "failed": len(result.failed),
                "removed": result.removed,
                "seconds": round(result.seconds, 3),
                "per_second": round(result.per_second, 1),
                "base_url": base_url,
                "failed_reasons": MetadataValue.json(failed),
            },
            check_results=[
                AssetCheckResult(
                    check_name=QR_COMPLETE,
                    passed=current == registered,
                    severity=AssetCheckSeverity.WARN,
                    metadata={"registered": registered, "without_current_qr": registered - current},
                )
            ],
        )

    return qr_images
