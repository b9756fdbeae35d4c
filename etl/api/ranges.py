"""HTTP conditional and range requests on a file with a strong ETag (RFC 9110 §13, §14).

Only single byte ranges are served; a malformed or multi-range ``Range`` is ignored (the whole file,
200), which RFC 9110 allows. A range starting past the end is unsatisfiable (416).
"""

from __future__ import annotations

import re

_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)


class RangeNotSatisfiable(Exception):
    pass


def quoted_etag(sha256: str) -> str:
    return f'"{sha256}"'


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """``If-None-Match`` uses the weak comparison: ``W/"x"`` matches ``"x"``; ``*`` matches anything."""
    if not if_none_match:
        return False
    for candidate in if_none_match.split(","):
        c = candidate.strip()
        if c == "*" or c.removeprefix("W/") == etag:
            return True
    return False


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The single range ``(first, last)`` (inclusive) to serve, or None for the whole file.

    Raises RangeNotSatisfiable when the range is well formed but lies outside a file of ``size`` bytes.
    """
    if not header:
        return None
    m = _RANGE.match(header)
    if m is None:  # multiple ranges, another unit, garbage: ignore, serve everything
        return None
    first_text, last_text = m.groups()
    if not first_text and not last_text:
        return None
    if len(first_text) > 18 or len(last_text) > 18:  # beyond any file, and int() of it is costly
        raise RangeNotSatisfiable
    if not first_text:  # suffix: the last N bytes
        suffix = int(last_text)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable
        return max(0, size - suffix), size - 1
    first = int(first_text)
    last = int(last_text) if last_text else size - 1
    if last_text and last < first:  # invalid syntax per RFC 9110 §14.1.1: ignore the header
        return None
    if first >= size:
        raise RangeNotSatisfiable
    return first, min(last, size - 1)


def if_range_allows(if_range: str | None, etag: str) -> bool:
    """A ``Range`` is honoured only if ``If-Range`` is absent or names the current (strong) ETag."""
    return if_range is None or if_range.strip() == etag
