"""Client-wide request pacing for the Router: an optional requests-per-second limit plus pauses.

Dagster pools cap concurrent steps, not request rates, so the Router client paces itself here. One
``Throttle`` is shared by every task of a client. It is a token bucket of ``burst`` tokens (1 by
default: sends at least ``1/rate`` apart) drained under a FIFO lock. A stalled event loop delays the
following sends instead of releasing them in a catch-up burst: the limit is never exceeded, at the
cost of running slightly under it on a busy machine.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

from sqlalchemy import Engine

from etl.store.pace import hold_sends, reserve_send_time


class Throttle:
    def __init__(
        self,
        requests_per_second: float | None = None,
        *,
        burst: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if requests_per_second is not None and (
            not math.isfinite(requests_per_second) or requests_per_second <= 0
        ):
            raise ValueError(
                f"requests_per_second must be a positive number or None, got {requests_per_second!r}"
            )
        if burst < 1:
            raise ValueError(f"burst must be at least 1, got {burst!r}")
        self.rate = requests_per_second
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._refilled_at = clock()
        self._lock = asyncio.Lock()
        self._paused_until = -math.inf

    def pause(self, seconds: float) -> None:
        """Hold every task of the client for ``seconds``: a Retry-After speaks to the client, not one call."""
        if seconds > 0:
            self._paused_until = max(self._paused_until, self._clock() + seconds)

    async def wait(self) -> None:
        """Return when this task may send one request."""
        await self._paused()
        if self.rate is None:
            return
        async with self._lock:
            await self._paused()  # a Retry-After may have come in while this task queued
            self._refill()
            if self._tokens < 1:
                await asyncio.sleep((1 - self._tokens) / self.rate)
                self._refill()
            self._tokens = max(self._tokens - 1, 0.0)  # sleep() may wake a hair early

    async def _paused(self) -> None:
        while (delay := self._paused_until - self._clock()) > 0:
            await asyncio.sleep(delay)  # re-check: another 429 may have extended the pause meanwhile

    def _refill(self) -> None:
        assert self.rate is not None
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._refilled_at) * self.rate)
        self._refilled_at = now


class SharedThrottle(Throttle):
    """The university's rate limit held in the state DB (etl.store.pace): every process and machine
    sending for the same key draws send times from one schedule. A Retry-After pauses them all."""

    def __init__(self, engine: Engine, institution: str, requests_per_second: float) -> None:
        super().__init__(requests_per_second)
        self._engine = engine
        self.institution = institution

    async def wait(self) -> None:
        await self._paused()
        assert self.rate is not None
        # The reservation is a short DB transaction: off the event loop, which keeps other calls going.
        at = await asyncio.to_thread(
            reserve_send_time, self._engine, self.institution, 1 / self.rate, time.time()
        )
        if (delay := at - time.time()) > 0:
            await asyncio.sleep(delay)

    def pause(self, seconds: float) -> None:
        super().pause(seconds)
        if seconds > 0:
            hold_sends(self._engine, self.institution, time.time() + seconds)
