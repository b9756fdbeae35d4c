"""The feed cursor: an opaque, URL-safe token for a position in a university's (changed_at, ESCN) order.

Clients must treat it as opaque; it is base64 of a small JSON array so it stays debuggable. A cursor
names its university, so one cannot be replayed against another university's feed.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import re
from dataclasses import dataclass

_VERSION = 1
_ESCN = re.compile(r"^[0-9a-f-]{36}$")


class InvalidCursor(ValueError):
    pass


@dataclass(frozen=True)
class FeedPosition:
    university: str
    changed_at: dt.datetime | None  # None: before the first card
    escn: str | None

    @property
    def is_start(self) -> bool:
        return self.changed_at is None


def start(university: str) -> FeedPosition:
    return FeedPosition(university, None, None)


def encode_cursor(pos: FeedPosition) -> str:
    at = pos.changed_at.isoformat(timespec="microseconds") if pos.changed_at else None
    raw = json.dumps([_VERSION, pos.university, at, pos.escn], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode("ascii")).decode("ascii").rstrip("=")


def decode_cursor(text: str) -> FeedPosition:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        version, university, at, escn = json.loads(raw)
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        raise InvalidCursor("not a cursor returned by this feed") from None
    if version != _VERSION or not isinstance(university, str):
        raise InvalidCursor("not a cursor returned by this feed")
    if at is None and escn is None:
        return start(university)
    if not isinstance(at, str) or not isinstance(escn, str) or not _ESCN.fullmatch(escn):
        raise InvalidCursor("not a cursor returned by this feed")
    try:
        changed_at = dt.datetime.fromisoformat(at)
    except ValueError:
        raise InvalidCursor("not a cursor returned by this feed") from None
    if changed_at.tzinfo is not None:
        raise InvalidCursor("not a cursor returned by this feed")
    return FeedPosition(university, changed_at, escn)
