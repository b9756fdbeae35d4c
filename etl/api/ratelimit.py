"""Per-token rate limit: a token bucket in memory, refilled continuously.

The bucket holds one minute's allowance (``rate_per_minute`` requests) so a client may burst up to its
per-minute rate and is then paced at ``rate_per_minute / 60`` requests a second. In memory means per
server process: run one API process per deployment (or divide the rates by the process count).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable


class RateLimiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[int, tuple[float, float]] = {}  # key -> (tokens left, last refill time)
        self._lock = threading.Lock()

    def acquire(self, key: int, rate_per_minute: int) -> float:
        """Take one request from ``key``'s bucket: 0.0 if allowed, else the seconds until one is free."""
        capacity = float(max(1, rate_per_minute))
        per_second = capacity / 60.0
        with self._lock:
            now = self._clock()
            tokens, last = self._buckets.get(key, (capacity, now))
            tokens = min(capacity, tokens + (now - last) * per_second)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / per_second


def retry_after_header(wait_seconds: float) -> str:
    """``Retry-After`` in whole seconds, rounded up so a client that obeys it is let through."""
    return str(max(1, math.ceil(wait_seconds)))
