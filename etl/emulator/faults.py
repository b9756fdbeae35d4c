"""Fault injection settings and the seeded plan that draws latency and faults per request.

Kinds: ``500``, ``502``, ``503`` (JSON bodies), ``429`` (with ``Retry-After`` seconds), ``timeout``
(sleep ``timeout_s`` then drop the connection), ``drop`` (close the connection without a response),
``html`` (a gateway's 502 HTML page). On writes, a ``post_commit_share`` of faults strike after the
change is committed: the client sees a failure, retries, and must cope with 409 (idempotency).
``429`` always strikes before: a rate limiter rejects work, it does not do it. ``deny_pics``
simulates the production Router's address allow-list: every authenticated call with the key of a
listed PIC answers 403, as for a source address the Commission has not allow-listed for it.

Environment variables (command-line flags of the same name win): ESC_EMULATOR_LATENCY_MS,
ESC_EMULATOR_LATENCY_JITTER_MS, ESC_EMULATOR_LATENCY_SIGMA, ESC_EMULATOR_FAIL_RATE,
ESC_EMULATOR_FAULT_KINDS (e.g. ``500,503=2,drop``), ESC_EMULATOR_POST_COMMIT_SHARE,
ESC_EMULATOR_TIMEOUT_S, ESC_EMULATOR_RETRY_AFTER_S, ESC_EMULATOR_SEED, ESC_EMULATOR_DENY_PICS
(``PIC,PIC``).
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

FAULT_KINDS = ("500", "502", "503", "429", "timeout", "drop", "html")
# Timeouts are opt-in: each one stalls a client worker for its whole timeout.
DEFAULT_FAULT_KINDS = ("500", "502", "503", "429", "drop", "html")
ENV_PREFIX = "ESC_EMULATOR_"
_PIC_RE = re.compile(r"^[0-9]{9}$")


def _default_kinds() -> dict[str, float]:
    return dict.fromkeys(DEFAULT_FAULT_KINDS, 1.0)


@dataclass(frozen=True)
class FaultConfig:
    """Latency is ``latency_ms`` (the median, times a lognormal factor when ``latency_sigma`` > 0)
    plus a uniform ``±latency_jitter_ms``; ``fail_rate`` of authenticated API calls get a fault drawn
    from ``fault_kinds`` (kind → weight)."""

    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    latency_sigma: float = 0.0
    fail_rate: float = 0.0
    fault_kinds: Mapping[str, float] = field(default_factory=_default_kinds)
    post_commit_share: float = 0.5
    timeout_s: float = 30.0
    retry_after_s: int = 1
    seed: int | None = None
    deny_pics: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "deny_pics", tuple(self.deny_pics))
        for pic in self.deny_pics:
            if not isinstance(pic, str) or not _PIC_RE.match(pic):
                raise ValueError(f"deny_pics: {pic!r} is not a 9-digit PIC")
        for name in ("latency_ms", "latency_jitter_ms", "latency_sigma", "timeout_s"):
            value = getattr(self, name)
            if not _is_number(value) or value < 0:
                raise ValueError(f"{name}: {value!r} must be a number >= 0")
        for name in ("fail_rate", "post_commit_share"):
            value = getattr(self, name)
            if not _is_number(value) or not 0 <= value <= 1:
                raise ValueError(f"{name}: {value!r} must be between 0 and 1")
        if (
            isinstance(self.retry_after_s, bool)
            or not isinstance(self.retry_after_s, int)
            or self.retry_after_s < 0
        ):
            raise ValueError(f"retry_after_s: {self.retry_after_s!r} must be an integer >= 0")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ValueError(f"seed: {self.seed!r} must be an integer")
        if not isinstance(self.fault_kinds, Mapping):
            raise ValueError("fault_kinds: must map kind to weight")
        for kind, weight in self.fault_kinds.items():
            if kind not in FAULT_KINDS:
                raise ValueError(f"fault_kinds: unknown kind {kind!r} (known: {', '.join(FAULT_KINDS)})")
            if not _is_number(weight) or weight < 0:
                raise ValueError(f"fault_kinds: weight of {kind} must be a number >= 0")
        if self.fail_rate > 0 and sum(self.fault_kinds.values()) <= 0:
            raise ValueError("fault_kinds: at least one kind needs a positive weight when fail_rate > 0")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["fault_kinds"] = dict(self.fault_kinds)
        d["deny_pics"] = list(self.deny_pics)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FaultConfig:
        """Missing fields take their defaults; unknown fields are an error (a typo must not pass)."""
        if not isinstance(data, Mapping):
            raise ValueError("fault config must be a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown fault settings: {', '.join(unknown)}")
        values = dict(data)
        kinds = values.get("fault_kinds")
        if isinstance(kinds, str):
            values["fault_kinds"] = parse_kinds(kinds)
        elif isinstance(kinds, list):
            values["fault_kinds"] = dict.fromkeys(kinds, 1.0)
        elif isinstance(kinds, Mapping):
            values["fault_kinds"] = dict(kinds)
        pics = values.get("deny_pics")
        if isinstance(pics, str):
            values["deny_pics"] = parse_pics(pics)
        elif pics is not None and not isinstance(pics, list | tuple):
            raise ValueError("deny_pics: a list of PICs")
        return cls(**values)

    @classmethod
    def from_strings(cls, raw: Mapping[str, str | None]) -> FaultConfig:
        """From field name → text (environment variables or flags); empty or None means default."""
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            text = raw.get(f.name)
            if text is None or text == "":
                continue
            try:
                if f.name == "fault_kinds":
                    values[f.name] = parse_kinds(text)
                elif f.name == "deny_pics":
                    values[f.name] = parse_pics(text)
                elif f.name in ("seed", "retry_after_s"):
                    values[f.name] = int(text)
                else:
                    values[f.name] = float(text)
            except ValueError as e:
                raise ValueError(f"{f.name}: {text!r}: {e}") from None
        return cls(**values)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> FaultConfig:
        return cls.from_strings({name: environ.get(env_name(name)) for name in field_names()})


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(FaultConfig)]


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def parse_kinds(text: str) -> dict[str, float]:
    """``500,503=2,drop`` → {"500": 1, "503": 2, "drop": 1}; kinds are checked by FaultConfig."""
    kinds: dict[str, float] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        kind, sep, weight = item.partition("=")
        kinds[kind.strip()] = float(weight) if sep else 1.0
    return kinds


def parse_pics(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


@dataclass(frozen=True)
class Fault:
    kind: str
    after_commit: bool


class FaultPlan:
    """Draws latency and faults from one seeded generator, so a seed replays the same sequence."""

    def __init__(self, config: FaultConfig) -> None:
        self.config = config
        self._rng = random.Random(config.seed)
        self._kinds = [k for k, w in config.fault_kinds.items() if w > 0]
        self._weights = [config.fault_kinds[k] for k in self._kinds]

    @property
    def idle(self) -> bool:
        c = self.config
        return c.fail_rate == 0 and c.latency_ms == 0 and c.latency_jitter_ms == 0

    def denies(self, pic: str) -> bool:
        return pic in self.config.deny_pics

    def latency_s(self) -> float:
        c = self.config
        ms = c.latency_ms
        if c.latency_sigma > 0 and ms > 0:
            ms *= self._rng.lognormvariate(0.0, c.latency_sigma)
        if c.latency_jitter_ms > 0:
            ms += self._rng.uniform(-c.latency_jitter_ms, c.latency_jitter_ms)
        return max(ms, 0.0) / 1000.0

    def draw(self, *, write: bool) -> Fault | None:
        c = self.config
        if c.fail_rate <= 0 or self._rng.random() >= c.fail_rate:
            return None
        kind = self._rng.choices(self._kinds, self._weights)[0]
        after = write and kind != "429" and self._rng.random() < c.post_commit_share
        return Fault(kind, after)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
