"""What a badge shows: one immutable value built by the API/assets from the state DB, rendered here."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, fields
from typing import Any

from etl.domain.states import CardStatus

_TEXT_FIELDS = (
    "university_code",
    "university_name",
    "full_name",
    "matricola",
    "course_name",
    "esi",
    "escn",
    "card_type",
    "status",
    "qr_payload",
)


@dataclass(frozen=True)
class BadgeView:
    university_code: str
    university_name: str
    full_name: str
    matricola: str
    course_name: str
    academic_year: int  # first calendar year: 2025 means 2025/2026
    esi: str
    escn: str
    card_type: str  # Router card type: PASSIVE (printed), SMART_PASSIVE (virtual badge), ...
    issued_at: dt.date
    expires_at: dt.date
    status: str  # ACTIVE, INACTIVE, EXPIRED, ... as the Router (or our state DB) says
    qr_payload: str

    def __post_init__(self) -> None:
        for name in _TEXT_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"badge field {name} must be a non-empty string, not {value!r}")
        if (
            not isinstance(self.academic_year, int)
            or isinstance(self.academic_year, bool)
            or not 1900 <= self.academic_year <= 2999
        ):
            raise ValueError(f"badge academic_year must be a year like 2025, not {self.academic_year!r}")
        for name in ("issued_at", "expires_at"):
            value = getattr(self, name)
            # datetime is a date subclass: refuse it, a badge shows calendar dates only
            if not isinstance(value, dt.date) or isinstance(value, dt.datetime):
                raise ValueError(f"badge field {name} must be a date, not {value!r}")
        if self.expires_at < self.issued_at:
            raise ValueError(f"badge expires_at {self.expires_at} is before issued_at {self.issued_at}")
        if self.status != self.status.upper():
            raise ValueError(f"badge status must be upper case like ACTIVE, not {self.status!r}")

    @property
    def academic_year_label(self) -> str:
        return f"{self.academic_year}/{self.academic_year + 1}"

    @property
    def is_active(self) -> bool:
        return self.status == CardStatus.ACTIVE

    def to_json_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.isoformat() if isinstance(value, dt.date) else value
        out["academic_year_label"] = self.academic_year_label
        return out
