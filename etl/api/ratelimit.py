"""Per-token rate limit: a token bucket in memory, refilled continuously.

The bucket holds one minute's allowance (``rate_per_minute`` requests) so a client may burst up to its
per-minute rate and is then paced at ``rate_per_minute / 60`` requests a second. In memory means per
server process: run one API process per deployment (or divide the rates by the process count).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Hashable

_MAX_KEYS = 100_000  # full buckets are forgotten beyond that: memory stays bounded


class RateLimiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[Hashable, tuple[float, float]] = {}  # key -> (tokens left, last refill)
        self._lock = threading.Lock()

    def acquire(self, key: Hashable, rate_per_minute: int) -> float:
        """Take one request from ``key``'s bucket: 0.0 if allowed, else the seconds until one is free."""
        return self._take(key, rate_per_minute, 1.0)

    def peek(self, key: Hashable, rate_per_minute: int) -> float:
        """The seconds until ``key``'s bucket holds a request (0.0: now), taking nothing."""
        return self._take(key, rate_per_minute, 0.0)

    def _take(self, key: Hashable, rate_per_minute: int, amount: float) -> float:
        capacity = float(max(1, rate_per_minute))
        per_second = capacity / 60.0
        with self._lock:
            now = self._clock()
            tokens, last = self._buckets.get(key, (capacity, now))
            tokens = min(capacity, tokens + (now - last) * per_second)
            if tokens >= 1.0:
                if amount:
                    if len(self._buckets) >= _MAX_KEYS:
                        self._forget_full(now)
                    self._buckets[key] = (tokens - amount, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / per_second

    def _forget_full(self, now: float) -> None:
        """Drop the buckets idle for a minute (full again at any rate): an address-keyed limiter under
        a flood of addresses stays bounded."""
        self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < 60.0}


def retry_after_header(wait_seconds: float) -> str:
    """``Retry-After`` in whole seconds, rounded up so a client that obeys it is let through."""
    return str(max(1, math.ceil(wait_seconds)))
