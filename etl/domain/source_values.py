"""Rules for raw values read from Esse3 before anything trusts them: keys, names, change dates.

A key that is not an exact positive integer is never coerced: ``int(3.7)`` would attach an ESI and a
card to person 3, someone else. A name with control or bidirectional-override characters is never
sent to the Router (it would show, or hide, something else on a badge). A change date in the future
never reaches a watermark (one row dated 2100 would hide every later change of its academic year).
Reasons name the column and the kind of value, never the value.
"""

from __future__ import annotations

import datetime as dt
import unicodedata
from decimal import Decimal
from typing import Any

MAX_KEY = 2**31 - 1  # state DB key columns are 32-bit integers
DEFAULT_FUTURE_SKEW = dt.timedelta(minutes=15)  # [esse3] max_future_skew_minutes

# Bidirectional controls: marks, embeddings, overrides and isolates (U+200E/F, U+061C, U+202A–U+202E,
# U+2066–U+2069). They reorder what a badge shows without being visible themselves.
BIDI_CONTROLS = frozenset("\u200e\u200f\u061c\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
# Unicode categories refused in names and e-mails: controls (C0, C1, NUL), surrogates, private use,
# unassigned code points. Format characters other than the bidi controls (ZWJ, ZWNJ, soft hyphen...)
# are kept: some scripts need them.
_REFUSED_CATEGORIES = frozenset(("Cc", "Cs", "Co", "Cn"))


def key_problem(column: str, value: Any) -> str | None:
    """Why ``value`` is not a usable key (an exact integer in 1..2^31-1), or None when it is."""
    if value is None:
        return f"missing {column}"
    if isinstance(value, bool):
        return f"{column} is not an integer key (boolean)"
    if isinstance(value, Decimal):  # Oracle NUMBER: exact, fine when integral
        if value != value.to_integral_value():
            return f"{column} is not an integer key (fractional number)"
        value = int(value)
    if isinstance(value, float):
        return f"{column} is not an exact integer key (floating-point number)"
    if not isinstance(value, int):
        return f"{column} is not an integer key ({type(value).__name__})"
    if value <= 0:
        return f"{column} is not a positive key"
    if value > MAX_KEY:
        return f"{column} is out of range (above {MAX_KEY})"
    return None


def exact_key(value: Any) -> int:
    """The key as an int; call only after ``key_problem`` returned None."""
    return int(value)


def quarantine_key(value: Any) -> str:
    """How a row is named in the quarantine table, whatever its key's type (at most 64 characters)."""
    if isinstance(value, Decimal) and value == value.to_integral_value():
        value = int(value)
    return repr(value)[:64] if not isinstance(value, int | str) else str(value)[:64]


def text_problem(column: str, value: str | None) -> str | None:
    """Why a name or e-mail cannot go to the Router as it is, or None."""
    if value is None or value.isprintable():  # C speed for the common case: every refused one is not
        return None
    for ch in value:
        if ch in BIDI_CONTROLS:
            return f"{column} contains a bidirectional control character"
        if unicodedata.category(ch) in _REFUSED_CATEGORIES:
            return f"{column} contains a control, private-use or unassigned character"
    return None


def future_cutoff(now: dt.datetime, skew: dt.timedelta) -> dt.datetime:
    """The latest believable DATA_MOD: Esse3's clock may run a little ahead of ours, not years."""
    return now + skew


def in_the_future(data_mod: dt.datetime | None, cutoff: dt.datetime) -> bool:
    return data_mod is not None and data_mod > cutoff
