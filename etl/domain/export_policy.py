"""When a university-year gets a full export rather than an incremental one, and how many are kept:
``[exports]`` in the configuration (``retention_full``, ``full_every_hours``, ``full_changed_share``)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from etl.errors import ConfigError

EXPORT_KEYS = frozenset(("retention_full", "full_every_hours", "full_changed_share"))


@dataclass(frozen=True)
class ExportPolicy:
    retention_full: int = 3
    full_every: dt.timedelta = dt.timedelta(hours=24)
    full_changed_share: float = 0.25

    def __post_init__(self) -> None:
        if isinstance(self.retention_full, bool) or not isinstance(self.retention_full, int):
            raise ConfigError(f"exports: field retention_full: {self.retention_full!r} must be an integer")
        if self.retention_full < 1:
            raise ConfigError(f"exports: field retention_full: {self.retention_full} must be at least 1")
        if self.full_every <= dt.timedelta(0):
            raise ConfigError("exports: field full_every_hours: must be positive")
        if not 0 < self.full_changed_share <= 1:
            raise ConfigError(
                f"exports: field full_changed_share: {self.full_changed_share!r} must be in (0, 1]"
            )

    @classmethod
    def from_settings(cls, settings: Any) -> ExportPolicy:
        """``settings.exports`` (``[exports]`` in the TOML, parsed when the configuration is loaded)."""
        raw = getattr(settings, "exports", None)
        if raw is None:
            return cls()
        return raw if isinstance(raw, ExportPolicy) else cls.from_mapping(raw)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> ExportPolicy:
        get = raw.get
        hours = get("full_every_hours", 24)
        if isinstance(hours, bool) or not isinstance(hours, int | float):
            raise ConfigError(f"exports: field full_every_hours: {hours!r} must be a number")
        share = get("full_changed_share", cls.full_changed_share)
        if isinstance(share, bool) or not isinstance(share, int | float):
            raise ConfigError(f"exports: field full_changed_share: {share!r} must be a number")
        return cls(
            retention_full=get("retention_full", cls.retention_full),
            full_every=dt.timedelta(hours=hours),
            full_changed_share=float(share),
        )
