"""Esse3's clock: ``DATA_MOD`` is an Oracle ``DATE``, the wall-clock time of Esse3's zone without the
zone. In Europe/Rome the autumn fall-back repeats 02:00–03:00, and a row written in the repeated hour
carries a ``DATA_MOD`` *earlier* than rows written before it. Pure functions: no I/O, no wall clock.

- ``esse3_now``: "now" as Esse3 stamps it (the zone configured in ``[esse3] timezone``), so the
  future-date cutoff never mistakes a row of the spring's first summer hour for one from the future.
- ``read_since``: where an incremental read starts: the watermark minus the overlap, and, when that
  window touches a repeated hour, a whole repeat earlier, so the second pass of the hour is read.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_UTC = dt.UTC
EPOCH = dt.datetime(1900, 1, 1)  # before every Esse3 DATA_MOD: the watermark of a table never read
_STEP = dt.timedelta(minutes=15)  # repeated hours last an hour (30 min at Lord Howe): finer than both


def zone(name: str) -> ZoneInfo:
    """The IANA zone ``name``; ``ValueError`` with one line when the machine does not know it."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{name!r} is not an IANA time zone name (e.g. Europe/Rome)") from None


def machine_zone() -> str:
    """The machine's IANA zone name (``TZ``, ``/etc/localtime``, ``/etc/timezone``), else UTC."""
    for candidate in (os.environ.get("TZ", "").lstrip(":"), _localtime_link(), _etc_timezone()):
        if candidate:
            try:
                zone(candidate)
                return candidate
            except ValueError:
                continue
    return "UTC"


def _localtime_link() -> str:
    try:
        target = str(Path("/etc/localtime").readlink())
    except OSError:
        return ""
    _, sep, name = target.partition("zoneinfo/")
    return name if sep else ""


def _etc_timezone() -> str:
    try:
        return Path("/etc/timezone").read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return ""


def esse3_now(tz: ZoneInfo, instant: dt.datetime | None = None) -> dt.datetime:
    """The naive wall-clock time Esse3 would stamp at ``instant`` (aware; default: now)."""
    instant = instant or dt.datetime.now(_UTC)
    return instant.astimezone(tz).replace(tzinfo=None)


def repeat_length(t: dt.datetime, tz: ZoneInfo) -> dt.timedelta:
    """How much earlier the wall clock came back when ``t`` (naive) is a time that happened twice (the
    fall-back hour); zero for every other time, the spring's skipped hour included."""
    first, second = t.replace(tzinfo=tz, fold=0), t.replace(tzinfo=tz, fold=1)
    shift = (first.utcoffset() or dt.timedelta(0)) - (second.utcoffset() or dt.timedelta(0))
    return shift if shift > dt.timedelta(0) else dt.timedelta(0)


def read_since(watermark: dt.datetime, overlap: dt.timedelta, tz: ZoneInfo) -> dt.datetime:
    """The earliest ``DATA_MOD`` an incremental read must include after ``watermark``.

    Rows written during the second pass of a repeated hour are stamped up to one repeat *before* rows
    already read in its first pass: when ``[watermark - overlap, watermark]`` touches a repeated hour,
    the read goes back a whole repeat further. Nothing is needed in spring: the skipped hour holds no
    row, and naive comparisons step over it."""
    since = watermark - overlap
    t = since
    while t <= watermark:
        if shift := repeat_length(t, tz):
            return since - shift
        t += _STEP
    shift = repeat_length(watermark, tz)
    return since - shift


def inside_repeat(watermark: dt.datetime, now: dt.datetime, overlap: dt.timedelta, tz: ZoneInfo) -> bool:
    """Whether rows stamped *before* ``watermark`` may still be written: it lies in a repeated hour and
    Esse3's clock (``now``, naive) has not left that hour yet. No ``DATA_MOD`` marker can show such a
    row (the newest stays the watermark), so a partition in this state is read again every few
    minutes until the hour is over; at most an hour a year."""
    return bool(repeat_length(watermark, tz)) and now <= watermark + overlap
