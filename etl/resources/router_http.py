"""The HTTP plumbing of the Router client: its counters, the paths it may build, which failures are
transient, how long to wait before a retry, how bodies are encoded."""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import random
import re
from array import array
from collections import Counter
from collections.abc import Mapping
from typing import Any

import aiohttp
import httpx

from etl.resources.router_errors import RouterBadRequest

PAGE_SIZE_CAP = 10  # the Router silently caps `size` at 10

# Identifiers go raw into the path. Allow RFC 2141 characters minus '%' (would be decoded by the
# server) and ';' (Spring strips matrix parameters from paths): anything else changes the URL's meaning.
PATH_ID = re.compile(r"^[A-Za-z0-9()+,\-.:=@$_!*']{1,255}$")
KEY_CHARS = re.compile(r"^[\x21-\x7e]+$")
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    httpx.TimeoutException,
    httpx.NetworkError,  # connect, read, write, close errors
    httpx.RemoteProtocolError,  # connection dropped mid-answer, garbage status line
    # httpx-aiohttp maps only some aiohttp exceptions; the rest surface as themselves.
    aiohttp.ClientError,
    TimeoutError,
)


class RouterStats:
    """Counters cumulated over the client's life, for run metadata. Latency is one HTTP exchange
    (throttle and backoff waits excluded); a reservoir keeps memory flat over millions of calls."""

    RESERVOIR = 50_000

    def __init__(self) -> None:
        self.calls = 0  # API method calls (one may take several attempts)
        self.attempts = 0  # HTTP requests sent
        self.retries = 0
        self.retries_by_cause: Counter[str] = Counter()  # "429", "503", "timeout", "connect", ...
        self.errors_by_kind: Counter[str] = Counter()  # RouterError.kind raised to callers
        self._latencies = array("d")
        self._seen = 0
        self._rng = random.Random(0)

    def record_latency(self, seconds: float) -> None:
        self._seen += 1
        if len(self._latencies) < self.RESERVOIR:
            self._latencies.append(seconds)
        elif (i := self._rng.randrange(self._seen)) < self.RESERVOIR:
            self._latencies[i] = seconds

    def latency_percentile(self, p: float) -> float | None:
        """Nearest-rank percentile in seconds, None before any answer."""
        if not 0 <= p <= 100:
            raise ValueError(f"percentile must be within 0..100, got {p!r}")
        if not self._latencies:
            return None
        ordered = sorted(self._latencies)
        rank = max(1, -(-len(ordered) * p // 100))  # ceil
        return ordered[int(rank) - 1]

    def as_dict(self) -> dict[str, Any]:
        p50, p95 = self.latency_percentile(50), self.latency_percentile(95)
        return {
            "calls": self.calls,
            "attempts": self.attempts,
            "retries": self.retries,
            "retries_by_cause": dict(self.retries_by_cause),
            "errors_by_kind": dict(self.errors_by_kind),
            "latency_p50_ms": None if p50 is None else round(p50 * 1000, 2),
            "latency_p95_ms": None if p95 is None else round(p95 * 1000, 2),
        }


def no_cookies(response: httpx.Response) -> None:
    return None


def item_path(collection: str, identifier: str) -> str:
    """``/api/v2/<collection>/<identifier>`` with the identifier raw (ESIs keep their colons)."""
    if not isinstance(identifier, str) or not PATH_ID.match(identifier):
        raise RouterBadRequest(
            f"refusing to call the Router: {identifier!r} is not a valid {collection[:-1]} identifier "
            "(1-255 URN characters, no '/', '%', ';', '?', '#' or spaces)"
        )
    return f"/api/v2/{collection}/{identifier}"


def check_page_size(page_size: int) -> None:
    if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1:
        raise ValueError(f"page_size must be a positive int, got {page_size!r}")


def log_path(path: str) -> str:
    """The path with the ESI/ESCN replaced: logs are kept longer and wider than quarantine rows."""
    parts = path.split("/")
    if is_item_path(path):
        parts[4] = "{esi}" if parts[3] == "persons" else "{escn}"
    return "/".join(parts)


def is_item_path(path: str) -> bool:
    parts = path.split("/")  # "", api, v2, collection, id[, sub]
    return len(parts) >= 5 and parts[3] in ("persons", "cards") and parts[4] != "generate-escn"


def transport_cause(e: BaseException) -> str:
    """A short label for stats and logs. httpx-aiohttp maps every aiohttp connection error to
    ConnectTimeout, so look at the aiohttp exception it chained first."""
    inner = e.__cause__ if isinstance(e.__cause__, aiohttp.ClientError) else e
    for kinds, label in (
        (aiohttp.ServerDisconnectedError, "disconnected"),
        (
            aiohttp.ClientConnectorError
            | aiohttp.ConnectionTimeoutError
            | httpx.ConnectError
            | httpx.ConnectTimeout,
            "connect",
        ),
        (aiohttp.ServerTimeoutError | httpx.TimeoutException | TimeoutError, "timeout"),
        (aiohttp.ClientPayloadError | httpx.ReadError, "read"),
        (aiohttp.ClientOSError | httpx.NetworkError, "connection"),
    ):
        if isinstance(inner, kinds):
            return label
    return "protocol"


def retry_after_seconds(value: str | None, cap: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date), capped; None if absent
    or unreadable (the caller then uses its own backoff)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # HTTP-dates are GMT
            when = when.replace(tzinfo=dt.UTC)
        seconds = (when - dt.datetime.now(dt.UTC)).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), cap)


def encode_json(body: Mapping[str, Any]) -> bytes:
    if not isinstance(body, Mapping):
        raise TypeError(f"body must be a mapping, got {type(body).__name__}")
    # Unset fields are omitted, never sent as null (the Router's documented convention).
    return json.dumps({k: v for k, v in body.items() if v is not None}, ensure_ascii=False).encode()
