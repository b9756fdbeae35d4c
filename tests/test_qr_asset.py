"""The `qr_images` asset: symbols for registered cards only, decodable version 4-M PNGs, regeneration
only when the ESCN or the base URL changes, `changed_at` bumped, bad ESCNs reported, Dagster wiring."""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Sequence

import pytest
import zxingcpp
from dagster import AssetKey, DagsterInstance, materialize
from PIL import Image
from sqlalchemy import Engine, delete, select, update

from etl.assets.qr import build_qr_asset, check_base_url, render_partition_qr
from etl.domain.escn import mint_escn
from etl.domain.esi import compose_esi
from etl.errors import ConfigError
from etl.partitions import Partition, partitions_def
from etl.resources.runtime import Runtime
from etl.store.bulk import Bulk
from etl.store.models import Card, QrImage

PIC = "999978433"  # unife in the demo configuration
BASE = "https://s.esc-r.eu/"
PART = Partition(2024, "unife")
NAMES = [("Zoë", "D'Àngelo"), ("Łukasz", "Żółć"), ("Anna", "Bianchi"), ("Niccolò", "Rossi")]
T0 = dt.datetime(2026, 1, 5, 8, 0)


def escn_of(i: int) -> str:
    return mint_escn(PIC, unix_millis=1_767_225_600_000 + 7919 * i, clock_seq=(i * 37) % 16384)


CAREER_COLUMNS = (
    "institution", "stu_id", "pers_id", "person_key", "matricola", "academic_year", "course_code",
    "course_name", "course_type", "status", "finalised", "first_name", "last_name", "source_data_mod",
    "row_hash", "created_at", "updated_at",
)  # fmt: skip
CARD_COLUMNS = (
    "escn", "institution", "academic_year", "bdg_id", "stu_id", "esi", "card_type", "issued_at",
    "expires_at", "desired_status", "router_status", "state", "changed_at", "created_at",
)  # fmt: skip


def seed_cards(
    engine: Engine,
    ids: Sequence[int],
    *,
    partition: Partition = PART,
    state: str = "registered",
    changed_at: dt.datetime = T0,
) -> list[str]:
    """Careers and cards written straight into the state DB (no Esse3, no Router): card ``i`` belongs
    to career ``i``. Returns the ESCNs."""
    inst, year = partition.institution, partition.academic_year
    careers, cards = [], []
    for i in ids:
        first, last = NAMES[i % len(NAMES)]
        career = dict(
            institution=inst, stu_id=i, pers_id=10_000 + i, person_key="PERS_ID", matricola=f"M{100_000 + i}",
            academic_year=year, course_code="CS", course_name="Informatica", course_type="L", status="A",
            finalised=True, first_name=first, last_name=last, source_data_mod=T0, row_hash="h" * 32,
            created_at=T0, updated_at=T0,
        )  # fmt: skip
        card = dict(
            escn=escn_of(i), institution=inst, academic_year=year, bdg_id=i, stu_id=i,
            esi=compose_esi("unife.it", 10_000 + i), card_type="SMART_PASSIVE", issued_at=dt.date(year, 9, 1),
            expires_at=dt.date(year + 1, 10, 31), desired_status="ACTIVE", router_status="ACTIVE",
            state=state, changed_at=changed_at, created_at=T0,
        )  # fmt: skip
        careers.append(tuple(career[c] for c in CAREER_COLUMNS))
        cards.append(tuple(card[c] for c in CARD_COLUMNS))
    with engine.begin() as conn:
        bulk = Bulk(conn)
        bulk.upsert(
            "careers",
            CAREER_COLUMNS,
            ("institution", "stu_id"),
            careers,
            temporal=("source_data_mod", "created_at", "updated_at"),
        )
        bulk.upsert(
            "cards",
            CARD_COLUMNS,
            ("escn",),
            cards,
            temporal=("issued_at", "expires_at", "changed_at", "created_at"),
        )
    return [c[0] for c in cards]


def decode(png: bytes) -> zxingcpp.Barcode:
    got = zxingcpp.read_barcode(Image.open(io.BytesIO(png)), formats=zxingcpp.BarcodeFormat.QRCode)
    assert got is not None, "no QR found"
    return got


def stored(engine: Engine) -> dict[str, QrImage]:
    with engine.connect() as conn:
        return {r.escn: r for r in conn.execute(select(QrImage))}


def changed_at(engine: Engine) -> dict[str, dt.datetime]:
    with engine.connect() as conn:
        return {escn: at for escn, at in conn.execute(select(Card.escn, Card.changed_at))}


def test_renders_registered_cards_once_with_decodable_version_4_symbols(runtime: Runtime) -> None:
    engine = runtime.engine
    escns = seed_cards(engine, range(6))
    pending = seed_cards(engine, [50], state="pending")  # not valid until the Router confirms it
    other_year = seed_cards(engine, [60], partition=Partition(2025, "unife"))

    first = render_partition_qr(engine, PART, BASE)
    assert (first.registered, first.rendered, first.unchanged, first.failed) == (6, 6, 0, {})
    images = stored(engine)
    assert set(images) == set(escns)  # nothing for the pending card or the other partition
    assert not set(images) & set(pending + other_year)
    for escn, img in images.items():
        assert img.payload == BASE + escn
        assert (img.institution, img.academic_year) == ("unife", 2024)
        got = decode(img.png)
        assert got.text == BASE + escn
        assert got.extra["Version"] == "4" and got.ec_level == "M"
        assert img.svg.startswith(b"<svg") and img.svg.endswith(b"</svg>")
    bumped = changed_at(engine)
    assert all(bumped[e] > T0 for e in escns)  # the feed and the next incremental see the new QR
    assert bumped[pending[0]] == T0

    second = render_partition_qr(engine, PART, BASE)
    assert (second.rendered, second.unchanged) == (0, 6)
    assert stored(engine)[escns[0]].rendered_at == images[escns[0]].rendered_at
    assert changed_at(engine) == bumped


def test_regenerates_only_on_base_or_escn_change(runtime: Runtime) -> None:
    engine = runtime.engine
    escns = seed_cards(engine, range(4))
    render_partition_qr(engine, PART, BASE)
    before = stored(engine)

    # The card gets another ESCN (re-minted): its new number is rendered, the old symbol dropped.
    new_escn = escn_of(999)
    with engine.begin() as conn:
        conn.execute(update(Card).where(Card.escn == escns[0]).values(escn=new_escn))
    again = render_partition_qr(engine, PART, BASE)
    assert (again.rendered, again.unchanged, again.removed) == (1, 3, 1)
    after = stored(engine)
    assert escns[0] not in after and decode(after[new_escn].png).text == BASE + new_escn
    assert all(after[e].rendered_at == before[e].rendered_at for e in escns[1:])

    # A stored symbol whose payload was tampered with (or written by an old base) is redone.
    with engine.begin() as conn:
        conn.execute(update(QrImage).where(QrImage.escn == escns[1]).values(payload="https://x/" + escns[1]))
    assert render_partition_qr(engine, PART, BASE).rendered == 1

    # A new base URL (without the trailing slash: normalised) changes every symbol of the partition.
    moved = render_partition_qr(engine, PART, "https://qr.unife.it", chunk=2)  # chunks of 2: 2 commits
    assert (moved.rendered, moved.unchanged) == (4, 0)
    for escn, img in stored(engine).items():
        assert img.payload == "https://qr.unife.it/" + escn == decode(img.png).text
    assert render_partition_qr(engine, PART, "https://qr.unife.it/").rendered == 0


def test_bulk_partition_uses_the_pool_and_matches_serial_bytes(runtime: Runtime) -> None:
    engine = runtime.engine
    escns = seed_cards(engine, range(2100))  # above render_many's pool threshold
    result = render_partition_qr(engine, PART, BASE, chunk=2100)
    assert result.rendered == 2100 and result.per_second > 0
    images = stored(engine)
    assert len(images) == 2100
    sample = escns[::500]
    with engine.begin() as conn:  # re-render a sample serially: the pool gave the same bytes
        conn.execute(delete(QrImage).where(QrImage.escn.in_(sample)))
    assert render_partition_qr(engine, PART, BASE, workers=1).rendered == len(sample)
    again = stored(engine)
    assert all(again[e].png == images[e].png and again[e].svg == images[e].svg for e in sample)


def test_bad_escn_is_reported_and_the_rest_goes_on(runtime: Runtime) -> None:
    engine = runtime.engine
    escns = seed_cards(engine, range(3))
    with engine.begin() as conn:  # upper case: not a valid ESCN (and not something to encode)
        conn.execute(update(Card).where(Card.escn == escns[1]).values(escn=escns[1].upper()))
    result = render_partition_qr(engine, PART, BASE)
    assert result.rendered == 2
    assert list(result.failed) == [escns[1].upper()] and "lower case" in result.failed[escns[1].upper()]
    assert set(stored(engine)) == {escns[0], escns[2]}


@pytest.mark.parametrize(
    "base, message",
    [
        ("https://verification.example-university.it/cards/", "does not fit version 4-M"),
        ("ftp://s.esc-r.eu/", "not an http(s) URL"),
        ("https://s.esc-r.eu/à/", "ASCII"),
    ],
)
def test_unusable_base_url_fails_fast_as_configuration(
    sqlite_runtime: Runtime, base: str, message: str
) -> None:
    seed_cards(sqlite_runtime.engine, range(2))
    with pytest.raises(ConfigError, match="qr: field base_url") as err:
        render_partition_qr(sqlite_runtime.engine, PART, base)
    assert message in str(err.value)
    assert stored(sqlite_runtime.engine) == {}
    check_base_url(BASE)  # the default fits


def test_chunk_and_workers_must_be_positive(sqlite_runtime: Runtime) -> None:
    with pytest.raises(ValueError, match="chunk"):
        render_partition_qr(sqlite_runtime.engine, PART, BASE, chunk=0)
    with pytest.raises(ValueError, match="workers"):
        render_partition_qr(sqlite_runtime.engine, PART, BASE, workers=0)


def test_asset_materialises_with_metadata_and_check(sqlite_runtime: Runtime) -> None:
    seed_cards(sqlite_runtime.engine, range(5))
    asset = build_qr_asset(partitions_def(sqlite_runtime.settings), sqlite_runtime.settings)
    assert asset.group_names_by_key[AssetKey("qr_images")] == "exports"
    assert AssetKey("esc_cards") in asset.dependency_keys
    with DagsterInstance.ephemeral() as instance:
        for expected in (5, 0):
            result = materialize(
                [asset], partition_key="2024|unife", resources=sqlite_runtime.resources(), instance=instance
            )
            assert result.success
            [mat] = result.asset_materializations_for_node("qr_images")
            md = {k: v.value for k, v in mat.metadata.items()}
            assert md["rendered"] == expected and md["unchanged"] == 5 - expected
            assert md["dagster/row_count"] == 5 and md["failed"] == 0
            assert (md["per_second"] > 0) == (expected > 0)  # a rate only when something was rendered
            [check] = result.get_asset_check_evaluations()
            assert check.check_name == "qr_complete" and check.passed
