"""Shapes of path and query parameters: a malformed value is a 422 naming it, before any lookup."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

UNIVERSITY_PATTERN = r"^[a-z][a-z0-9_-]{1,31}$"  # as etl.config accepts university codes
MATRICOLA_PATTERN = r"^[A-Za-z0-9._-]{1,20}$"
ESCN_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-1[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9]{12}$"  # etl.domain.escn
EXPORT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$"  # file-name safe, as the export writer requires


def naive_utc(value: dt.datetime) -> dt.datetime:
    """The state DB keeps naive UTC; a client may send an offset (or none, meaning UTC). An instant
    outside the years 1–9999 in UTC (0001-01-01T00:00:00+01:00) is a bad value, not a crash."""
    if value.tzinfo is None:
        return value
    try:
        return value.astimezone(dt.UTC).replace(tzinfo=None)
    except OverflowError:
        raise ValueError("out of the representable range once converted to UTC") from None


_ISO_DATE_START = re.compile(r"^\d{4}-\d{2}-\d{2}")


def iso_datetime_only(value: Any) -> Any:
    """Refuse what pydantic would otherwise take as a datetime: a bare number is read as a Unix time
    (``since=0.5`` meaning 1970), which no client means."""
    if isinstance(value, str) and not _ISO_DATE_START.match(value):
        raise ValueError("must be an ISO 8601 date-time such as 2025-09-01T08:00:00Z")
    return value
