"""European Student Card Number (ESCN): minting and validation.

An ESCN is a lower-case version-1 UUID whose 12-digit node is a 3-digit server prefix followed by the
issuer's 9-digit PIC, in decimal. Minting follows the Commission's generators exactly (including their
quirk of adding the Gregorian offset unscaled), so numbers we mint offline look like the Router's own.
"""

from __future__ import annotations

import re
import secrets
import threading
import time
from collections.abc import Callable
from typing import Protocol

ESCN_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-1[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9]{12}$")
# The Commission adds the 100-ns offset between 1582-10-15 and 1970-01-01 without the x10000 scaling.
GREGORIAN_OFFSET = 12219292800000
TICKS_PER_MILLI = 10_000
_PIC_RE = re.compile(r"^[0-9]{9}$")


class InvalidEscn(ValueError):
    """The value is not a valid ESCN (or not one of the expected issuer); the message says why."""


class RandBits(Protocol):
    """``secrets`` (the default) or any object with ``randbits(k)``; ``random.Random`` works too."""

    def randbits(self, k: int, /) -> int: ...


def mint_escn(pic: str, *, prefix: int = 1, unix_millis: int, clock_seq: int, counter: int = 0) -> str:
    """One ESCN for ``unix_millis`` + ``counter`` (0..9999 numbers within that millisecond).

    Only the low 14 bits of ``clock_seq`` are used; the RFC 4122 variant bits are set here.
    """
    _check_pic(pic)
    _check_int("prefix", prefix, 0, 999)
    _check_int("unix_millis", unix_millis, 0, None)
    _check_int("clock_seq", clock_seq, 0, 0xFFFF)
    _check_int("counter", counter, 0, TICKS_PER_MILLI - 1)
    t = unix_millis * TICKS_PER_MILLI + GREGORIAN_OFFSET + counter
    if t >= 1 << 60:
        raise InvalidEscn("unix_millis is too far in the future for a 60-bit UUID timestamp")
    time_low = t & 0xFFFFFFFF
    time_mid = (t >> 32) & 0xFFFF
    time_hi_and_version = ((t >> 48) & 0x0FFF) | 0x1000
    clock = (clock_seq & 0x3FFF) | 0x8000
    return f"{time_low:08x}-{time_mid:04x}-{time_hi_and_version:04x}-{clock:04x}-{prefix:03d}{pic}"


def validate_escn(escn: str, pic: str | None = None) -> None:
    """Raise InvalidEscn unless ``escn`` is well formed (and issued under ``pic`` when given)."""
    if not isinstance(escn, str):
        raise InvalidEscn(f"ESCN must be a string, not {type(escn).__name__}")
    if not ESCN_RE.fullmatch(escn):
        if ESCN_RE.fullmatch(escn.lower()):
            raise InvalidEscn("ESCN must be lower case")
        raise InvalidEscn(
            "ESCN must be a version-1 UUID 8-4-4-4-12 whose node is a 3-digit prefix and a 9-digit PIC"
        )
    if pic is not None:
        _check_pic(pic)
        if escn[-9:] != pic:
            raise InvalidEscn(f"ESCN was issued under PIC {escn[-9:]}, not {pic}")


def escn_pic(escn: str) -> str:
    """The issuer PIC (last 9 digits) of a valid ESCN."""
    validate_escn(escn)
    return escn[-9:]


# Process-wide last tick per (pic, prefix, clock_seq): two minters that drew the same clock sequence
# share one monotonic sequence, so a process never hands out the same number twice.
_last_tick: dict[tuple[str, int, int], int] = {}
_last_tick_lock = threading.Lock()


def _now_millis() -> int:
    return time.time_ns() // 1_000_000


class EscnMinter:
    """Thread-safe ESCN source for one issuer.

    Ticks are ``millis * 10000 + counter``; each mint takes ``max(now, last + 1)``, so a burst beyond
    10 000 per millisecond borrows the next millisecond and a clock stepping backwards cannot repeat.
    """

    def __init__(
        self,
        pic: str,
        prefix: int = 1,
        clock: Callable[[], int] = _now_millis,
        rng: RandBits = secrets,
        clock_seq: int | None = None,
    ) -> None:
        """``clock_seq``: one no other running minter of this PIC holds (esc-sync takes it from the
        state DB); without it a random one, which keeps minters apart only by luck."""
        _check_pic(pic)
        _check_int("prefix", prefix, 0, 999)
        self.pic = pic
        self.prefix = prefix
        self._clock = clock
        if clock_seq is None:
            # ``secrets`` offers randbits, ``random.Random`` getrandbits: accept both.
            draw = getattr(rng, "randbits", None) or rng.getrandbits  # type: ignore[attr-defined]
            clock_seq = draw(14)
        _check_int("clock_seq", clock_seq, 0, 0x3FFF)
        self.clock_seq = (clock_seq & 0x3FFF) | 0x8000
        self._key = (pic, prefix, self.clock_seq)

    def mint(self) -> str:
        now = self._clock() * TICKS_PER_MILLI
        with _last_tick_lock:
            tick = max(now, _last_tick.get(self._key, -1) + 1)
            _last_tick[self._key] = tick
        millis, counter = divmod(tick, TICKS_PER_MILLI)
        return mint_escn(
            self.pic, prefix=self.prefix, unix_millis=millis, clock_seq=self.clock_seq, counter=counter
        )


def _check_pic(pic: str) -> None:
    if not isinstance(pic, str) or not _PIC_RE.fullmatch(pic):
        raise InvalidEscn(f"PIC {pic!r} must be a string of exactly 9 digits")


def _check_int(name: str, value: int, low: int, high: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidEscn(f"{name} must be an integer, not {type(value).__name__}")
    if value < low or (high is not None and value > high):
        raise InvalidEscn(f"{name} {value} out of range {low}..{high if high is not None else ''}")
