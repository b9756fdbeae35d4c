"""Throttles against guessing: failed authentications per client address, and lookups that find nothing
per token (someone walking sequential matricole or ESCNs). Both in memory, per API process, like the
rate limit (etl.api.ratelimit); both log one line when they start throttling, never a path or a token.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from etl.api.ratelimit import RateLimiter

log = logging.getLogger("etl.api")
WINDOW_S = 60.0
_MAX_KEYS = 100_000  # beyond that, forget the oldest state rather than grow without bound


class FailedAuthThrottle:
    """A client address may fail authentication ``per_minute`` times (a bucket refilled continuously);
    past that, its requests are answered 429 before any token is looked at."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self._buckets = RateLimiter(clock)
        self._clock = clock
        self._logged: dict[str, float] = {}

    def wait(self, address: str) -> float:
        """Seconds until ``address`` may try again (0.0: now); the first refusal a minute is logged."""
        wait = self._buckets.peek(address, self.per_minute)
        if wait > 0:
            now = self._clock()
            if now - self._logged.get(address, -1e18) >= WINDOW_S:
                if len(self._logged) >= _MAX_KEYS:
                    self._logged.clear()
                self._logged[address] = now
                log.warning(
                    "api: more than %d failed authentications a minute from %s: throttled (429)",
                    self.per_minute,
                    address,
                )
        return wait

    def failed(self, address: str) -> None:
        self._buckets.acquire(address, self.per_minute)


@dataclass
class _Window:
    start: float
    lookups: int = 0
    misses: int = 0
    blocked_until: float = 0.0


class NotFoundWatch:
    """Per token, the lookups of the current minute and how many found nothing. At ``minimum`` misses
    making at least ``share`` of the lookups, the token is logged and throttled until the minute ends."""

    def __init__(self, share: float, minimum: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.share = share
        self.minimum = minimum
        self._clock = clock
        self._windows: dict[int, _Window] = {}
        self._lock = threading.Lock()

    def wait(self, token_id: int) -> float:
        w = self._windows.get(token_id)
        return 0.0 if w is None else max(0.0, w.blocked_until - self._clock())

    def record(self, token_id: int, prefix: str, found: bool) -> None:
        now = self._clock()
        with self._lock:
            w = self._windows.get(token_id)
            if w is None or now - w.start >= WINDOW_S:
                if len(self._windows) >= _MAX_KEYS:
                    self._windows.clear()
                blocked = w.blocked_until if w else 0.0
                w = self._windows[token_id] = _Window(now, blocked_until=blocked)
            w.lookups += 1
            w.misses += not found
            if w.misses < self.minimum or w.misses < self.share * w.lookups or w.blocked_until > now:
                return
            w.blocked_until = now + WINDOW_S
            lookups, misses = w.lookups, w.misses
        log.warning(
            "api: token %d (%s…): %d of %d lookups in the last minute found nothing (enumeration?): "
            "throttled for %d s",
            token_id,
            prefix,
            misses,
            lookups,
            WINDOW_S,
        )
