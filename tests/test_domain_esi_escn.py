"""ESI composition/validation and ESCN minting/validation: pure rules, no I/O."""

from __future__ import annotations

import datetime as dt
import random
import threading
import uuid

import pytest

from etl.domain.escn import ESCN_RE, EscnMinter, InvalidEscn, escn_pic, mint_escn, validate_escn
from etl.domain.esi import ESI_PREFIX, InvalidEsi, compose_esi, esi_scope, same_esi, validate_esi

PIC = "999978433"
NEW_YEAR_2026_MS = int(dt.datetime(2026, 1, 1, tzinfo=dt.UTC).timestamp() * 1000)


# --- ESI -------------------------------------------------------------------------------------------


def test_compose_esi_domain_scoped() -> None:
    assert compose_esi("unife.it", 191275) == "urn:schac:personalUniqueCode:int:esi:unife.it:191275"
    assert compose_esi("unife.it", "A-12.b_3") == ESI_PREFIX + "unife.it:A-12.b_3"


def test_compose_esi_accepts_every_rfc2141_other_character() -> None:
    code = "a()+,-.:=@;$_!*'Z9"
    esi = compose_esi("uni.example.it", code)
    validate_esi(esi)
    assert esi.endswith(":" + code)


@pytest.mark.parametrize(
    ("schac", "code", "reason"),
    [
        ("UNIFE.it", 1, "lower case"),
        ("", 1, "empty"),
        ("unife", 1, "not an internet domain"),
        ("unife..it", 1, "not an internet domain"),
        ("-unife.it", 1, "not an internet domain"),
        ("unife.it", "", "code is empty"),
        ("unife.it", "12 34", "not URN-safe"),
        ("unife.it", "12/34", "not URN-safe"),
        ("unife.it", "12%2034", "not URN-safe"),
        ("unife.it", "12?x", "not URN-safe"),
        ("unife.it", "12#x", "not URN-safe"),
        ("unife.it", "àb", "not URN-safe"),
        ("unife.it", -5, "negative"),
        ("unife.it", True, "string or an integer"),
        ("unife.it", None, "string or an integer"),
        ("unife.it", "9" * 250, "at most 255"),
    ],
)
def test_compose_esi_rejects(schac: str, code: object, reason: str) -> None:
    with pytest.raises(InvalidEsi, match=reason):
        compose_esi(schac, code)  # type: ignore[arg-type]


def test_compose_esi_length_boundary() -> None:
    base = len(ESI_PREFIX + "unife.it:")
    assert len(compose_esi("unife.it", "1" * (255 - base))) == 255
    with pytest.raises(InvalidEsi, match="256 characters"):
        compose_esi("unife.it", "1" * (256 - base))


@pytest.mark.parametrize(
    "esi",
    [
        "urn:schac:personalUniqueCode:int:esi:unife.it:191275",
        "URN:SCHAC:PERSONALUNIQUECODE:INT:ESI:unife.it:191275",
        "urn:schac:personalUniqueCode:int:esi:fr:1234567890A",
        "urn:schac:personalUniqueCode:int:esi:ES:99",
        "urn:schac:personalUniqueCode:int:esi:uni.example.org:a:b:c",
    ],
)
def test_validate_esi_accepts(esi: str) -> None:
    validate_esi(esi)


@pytest.mark.parametrize(
    ("esi", "reason"),
    [
        ("urn:schac:personalUniqueCode:int:xyz:unife.it:1", "must start with"),
        ("unife.it:1", "must start with"),
        ("", "must start with"),
        (ESI_PREFIX + "unife.it", "':' after the scope is missing"),
        (ESI_PREFIX + ":1", "scope is empty"),
        (ESI_PREFIX + "ita:1", "neither a 2-letter country code"),
        (ESI_PREFIX + "unife.it:", "code is empty"),
        (ESI_PREFIX + "unife.it:1 2", "not URN-safe"),
        (ESI_PREFIX + "unife.it:" + "1" * 300, "at most 255"),
    ],
)
def test_validate_esi_rejects(esi: str, reason: str) -> None:
    with pytest.raises(InvalidEsi, match=reason):
        validate_esi(esi)


def test_validate_esi_rejects_non_string() -> None:
    with pytest.raises(InvalidEsi, match="string"):
        validate_esi(12)  # type: ignore[arg-type]


def test_esi_scope_and_same_esi() -> None:
    esi = compose_esi("unife.it", 191275)
    assert esi_scope(esi) == "unife.it"
    assert esi_scope(ESI_PREFIX + "fr:1") == "fr"
    assert same_esi(esi, esi.replace("urn:schac:personalUniqueCode", "URN:SCHAC:personaluniquecode"))
    assert not same_esi(esi, esi + "0")
    assert not same_esi(esi, esi.replace("unife.it", "UNIFE.it"))  # the rest compares exactly
    with pytest.raises(InvalidEsi):
        esi_scope("not-an-esi")


# --- ESCN ------------------------------------------------------------------------------------------


def test_commission_worked_example() -> None:
    escn = mint_escn(PIC, prefix=1, unix_millis=NEW_YEAR_2026_MS, clock_seq=0x9234)
    assert escn == "c3ddd400-d3ef-103e-9234-001999978433"
    validate_escn(escn, PIC)
    assert uuid.UUID(escn).version == 1
    assert uuid.UUID(escn).variant == uuid.RFC_4122


def test_only_low_14_bits_of_clock_seq_count() -> None:
    a = mint_escn(PIC, unix_millis=NEW_YEAR_2026_MS, clock_seq=0x1234)
    assert a == "c3ddd400-d3ef-103e-9234-001999978433"


def test_counter_increments_timestamp_and_prefix_is_three_digits() -> None:
    a = mint_escn(PIC, prefix=42, unix_millis=NEW_YEAR_2026_MS, clock_seq=0, counter=9999)
    assert a.startswith(f"{0xC3DDD400 + 9999:08x}-")
    assert a.endswith("-8000-042999978433")


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"pic": "12345678"}, "9 digits"),
        ({"pic": "12345678a"}, "9 digits"),
        ({"pic": 999978433}, "9 digits"),
        ({"prefix": 1000}, "prefix 1000 out of range"),
        ({"prefix": -1}, "prefix"),
        ({"unix_millis": -1}, "unix_millis"),
        ({"unix_millis": 1.5}, "integer"),
        ({"unix_millis": 2**60}, "too far in the future"),
        ({"clock_seq": 0x10000}, "clock_seq"),
        ({"counter": 10_000}, "counter"),
        ({"counter": True}, "integer"),
    ],
)
def test_mint_escn_rejects(kwargs: dict[str, object], reason: str) -> None:
    args: dict[str, object] = {"pic": PIC, "unix_millis": NEW_YEAR_2026_MS, "clock_seq": 0x9234} | kwargs
    with pytest.raises(InvalidEscn, match=reason):
        mint_escn(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("escn", "pic", "reason"),
    [
        ("C3DDD400-D3EF-103E-9234-001999978433", None, "lower case"),
        ("c3ddd400-d3ef-403e-9234-001999978433", None, "version-1"),  # v4
        ("c3ddd400-d3ef-103e-1234-001999978433", None, "version-1"),  # wrong variant
        ("c3ddd400-d3ef-103e-9234-001999978a33", None, "version-1"),  # hex node
        ("c3ddd400d3ef103e9234001999978433", None, "version-1"),
        ("", None, "version-1"),
        ("c3ddd400-d3ef-103e-9234-001999978433", "123456789", "issued under PIC 999978433"),
        ("c3ddd400-d3ef-103e-9234-001999978433", "12345", "9 digits"),
    ],
)
def test_validate_escn_rejects(escn: str, pic: str | None, reason: str) -> None:
    with pytest.raises(InvalidEscn, match=reason):
        validate_escn(escn, pic)


def test_validate_escn_rejects_non_string_and_escn_pic() -> None:
    with pytest.raises(InvalidEscn, match="string"):
        validate_escn(None)  # type: ignore[arg-type]
    assert escn_pic("c3ddd400-d3ef-103e-9234-001999978433") == PIC
    with pytest.raises(InvalidEscn):
        escn_pic("nope")


class _FixedBits:
    def __init__(self, value: int) -> None:
        self.value = value

    def randbits(self, k: int) -> int:
        return self.value


def test_minter_is_deterministic_with_injected_clock_and_rng() -> None:
    m = EscnMinter(PIC, clock=lambda: NEW_YEAR_2026_MS, rng=_FixedBits(0x0F01))
    first, second = m.mint(), m.mint()
    assert first == mint_escn(PIC, unix_millis=NEW_YEAR_2026_MS, clock_seq=0x0F01)
    assert second == mint_escn(PIC, unix_millis=NEW_YEAR_2026_MS, clock_seq=0x0F01, counter=1)


def test_minter_borrows_next_millisecond_after_10000_and_survives_clock_going_back() -> None:
    times = iter([NEW_YEAR_2026_MS + 500] * 10_001 + [NEW_YEAR_2026_MS + 400] * 3)
    m = EscnMinter(PIC, clock=lambda: next(times), rng=_FixedBits(0x0F02))
    got = [m.mint() for _ in range(10_004)]
    assert len(set(got)) == len(got)
    assert got[10_000] == mint_escn(PIC, unix_millis=NEW_YEAR_2026_MS + 501, clock_seq=0x0F02)
    assert all(ESCN_RE.match(e) for e in got)


def test_two_minters_sharing_a_clock_sequence_never_collide() -> None:
    a = EscnMinter(PIC, clock=lambda: NEW_YEAR_2026_MS + 7, rng=_FixedBits(0x0F03))
    b = EscnMinter(PIC, clock=lambda: NEW_YEAR_2026_MS + 7, rng=_FixedBits(0x0F03))
    assert len({a.mint(), b.mint(), a.mint(), b.mint()}) == 4


def test_minter_is_thread_safe_and_unique() -> None:
    m = EscnMinter(PIC, prefix=7, rng=random.Random(1))
    out: list[list[str]] = [[] for _ in range(4)]

    def work(bucket: list[str]) -> None:
        bucket.extend(m.mint() for _ in range(5000))

    threads = [threading.Thread(target=work, args=(b,)) for b in out]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    flat = [e for b in out for e in b]
    assert len(set(flat)) == 20_000
    for e in flat[:50]:
        validate_escn(e, PIC)
        assert e.endswith("007" + PIC)


def test_minter_rejects_bad_pic_and_prefix() -> None:
    with pytest.raises(InvalidEscn):
        EscnMinter("1234")
    with pytest.raises(InvalidEscn):
        EscnMinter(PIC, prefix=1000)
