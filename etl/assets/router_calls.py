"""Running many Router calls concurrently from a (synchronous) asset, and what every Router asset
reports. An auth failure stops the whole batch at once: every other call would fail the same way."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from dagster import AssetCheckResult, AssetCheckSeverity, AssetCheckSpec

from etl.errors import EscSyncError, ExitCode, UniversityError
from etl.resources.router import RouterClient
from etl.resources.router_errors import RouterError, RouterUnavailable

ROUTER_POOL = "esc_router"  # Dagster pool of the steps that call the Router: bounds concurrent runs
CALLS_COMPLETE = "router_calls_complete"  # the check that is red while calls ran out of retries

T = TypeVar("T")


def calls_check_spec(asset: str) -> AssetCheckSpec:
    return AssetCheckSpec(
        CALLS_COMPLETE,
        asset=asset,
        description="Every Router call of the run was answered (none ran out of retries).",
    )


R = TypeVar("R")


@dataclass
class CallReport:
    counts: Counter[str] = field(default_factory=Counter)
    retries: int = 0
    p50_ms: float | None = None
    p95_ms: float | None = None

    def absorb(self, client: RouterClient) -> None:
        s = client.stats
        self.retries += s.retries
        for pct, attr in ((50, "p50_ms"), (95, "p95_ms")):
            v = s.latency_percentile(pct)
            if v is not None:
                setattr(self, attr, round(v * 1000, 1))

    def calls_check(self, asset: str) -> AssetCheckResult:
        """Red (ERROR) while calls of this run ran out of retries: the items stay pending, and the
        unfinished_work sensor (or `esc-sync sync`) runs the partition again."""
        unsent = int(self.counts["unsent"])
        return AssetCheckResult(
            asset_key=asset,
            check_name=CALLS_COMPLETE,
            passed=unsent == 0,
            severity=AssetCheckSeverity.ERROR,
            metadata={"unsent": unsent, "retries": self.retries},
        )

    def metadata(self) -> dict[str, Any]:
        return {
            **{k: int(v) for k, v in sorted(self.counts.items())},
            "retries": self.retries,
            "latency_p50_ms": self.p50_ms if self.p50_ms is not None else 0.0,
            "latency_p95_ms": self.p95_ms if self.p95_ms is not None else 0.0,
        }


async def gather_calls(
    client: RouterClient, items: Sequence[T], call: Callable[[RouterClient, T], Coroutine[Any, Any, R]]
) -> list[R]:
    """Run ``call`` for every item concurrently (the client bounds concurrency and rate); results in
    item order. Calls handle their own per-item errors; anything raised (an auth error) cancels
    the rest of the batch."""
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(call(client, item)) for item in items]
    return [t.result() for t in tasks]


async def run_chunks(
    client: RouterClient,
    items: Sequence[T],
    size: int,
    record: Callable[[list[T]], None],
    call: Callable[[RouterClient, T], Coroutine[Any, Any, R]],
    confirm: Callable[[list[R]], None],
) -> None:
    """The intent protocol, chunk by chunk: intents committed before any of the chunk's calls, the
    outcomes after them. (Writing the next intents in a thread while calls run was measured: no gain
    at 40 ms latency, slower at zero — the threads compete with the event loop for the GIL.)"""
    for start in range(0, len(items), size):
        chunk = list(items[start : start + size])
        record(chunk)
        confirm(await gather_calls(client, chunk, call))


def run_with_client(
    client_factory: Callable[[], RouterClient],
    body: Callable[[RouterClient], Awaitable[R]],
    report: CallReport,
) -> R:
    """One client (one connection pool) for a whole asset run; Router errors that escape ``body``
    end the run with one clear line."""

    async def main() -> R:
        async with client_factory() as client:
            try:
                return await body(client)
            finally:
                report.absorb(client)

    try:
        return asyncio.run(main())
    except* RouterError as group:
        first = group.exceptions[0]
        kind = UniversityError if isinstance(first, RouterError) and first.stops_run else EscSyncError
        raise kind(
            str(first), exit_code=ExitCode.ROUTER, transient=isinstance(first, RouterUnavailable)
        ) from None
