"""The card on the Esse3 badge (issue 14): ESCN, QR payload, Router status and the QR PNG written onto
P01_BADGE, on a SQLite and a PostgreSQL Esse3; idempotent; another ESCN on a badge is never
overwritten but quarantined; a re-minted card replaces the number esc-sync wrote itself."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from dagster import DagsterInstance
from sqlalchemy import Engine, create_engine, text

from etl.assets.badge_write_back import STAGE, write_back_badges
from etl.definitions import build_definitions
from etl.demo.generate import generate
from etl.domain.badges import BADGE_GONE, ESCN_CONFLICT, BadgeWriteBack, unwritten
from etl.emulator import start_emulator
from etl.orchestrate import run_partitions
from etl.partitions import Partition
from etl.resources.runtime import Runtime
from etl.store.migrate import upgrade
from tests.fixtures.world import NOW, demo_settings

P = Partition(2025, "unife")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def esse3_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'esse3-unife.sqlite'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def world(
    tmp_path: Path, esse3_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Runtime, Engine]]:
    """unife's 2025 partition materialised end to end with the write-back on (PNG included)."""
    generate(esse3_url, seed=5, students=200, first_year=2024, last_year=2025, now=NOW)
    settings = demo_settings(
        tmp_path, f"sqlite:///{tmp_path / 'state.sqlite'}", academic_years={"first": 2024, "last": 2025}
    )
    unife = replace(
        settings.ateneo("unife"), esse3_url=esse3_url, write_back_badge=True, write_back_qr_png=True
    )
    monkeypatch.setenv("ESC_SYNC_ROUTER_KEY_UNIFE", "k1")
    with start_emulator({"k1": unife.pic}) as emu:
        rt = Runtime(replace(settings, atenei=(unife,), router=replace(settings.router, url=emu.url)))
        upgrade(rt.engine)
        backfill = run_partitions(build_definitions(rt.settings, rt), DagsterInstance.ephemeral(), [P])
        assert not backfill.failures, backfill.failures
        esse3 = create_engine(esse3_url)
        yield rt, esse3
        esse3.dispose()
        rt.dispose()


def _badges(esse3: Engine) -> dict[int, tuple[str | None, str | None, str | None, bytes | None]]:
    with esse3.connect() as conn:
        rows = conn.execute(
            text('SELECT "BDG_ID", "ESC_ESCN", "ESC_QR_URL", "ESC_STATO", "ESC_QR_PNG" FROM "P01_BADGE"')
        )
        return {int(b): (e, u, s, None if p is None else bytes(p)) for b, e, u, s, p in rows}


def _cards(rt: Runtime) -> dict[int, tuple[str, str, str, bytes]]:
    with rt.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT c.bdg_id, c.escn, q.payload, c.router_status, q.png FROM cards c "
                "JOIN qr_images q ON q.escn = c.escn "
                "WHERE c.institution = 'unife' AND c.state = 'registered' AND c.academic_year = 2025"
            )
        )
        return {int(b): (e, u, s, bytes(p)) for b, e, u, s, p in rows}


def _again(rt: Runtime) -> dict[str, int]:
    return write_back_badges(rt.engine, rt.esse3("unife"), rt.settings.ateneo("unife"), P)


def test_every_registered_card_is_on_its_badge_and_a_rerun_writes_nothing(world) -> None:
    rt, esse3 = world
    cards, badges = _cards(rt), _badges(esse3)
    assert len(cards) >= 20
    for bdg_id, (escn, url, status, png) in cards.items():
        assert badges[bdg_id] == (escn, url, status, png), bdg_id
        assert url == f"https://s.esc-r.eu/{escn}" and png.startswith(b"\x89PNG")
    assert _again(rt) == {"written": 0, "quarantined": 0, "badges_carrying_escn": len(cards)}


def test_a_status_change_is_written_and_another_escn_is_never_overwritten(world) -> None:
    rt, esse3 = world
    (closed, theirs, *_), cards = sorted(_cards(rt)), _cards(rt)
    with rt.engine.begin() as conn:  # the Router now says INACTIVE for two cards
        conn.execute(
            text("UPDATE cards SET router_status = 'INACTIVE' WHERE bdg_id IN (:a, :b)"),
            {"a": closed, "b": theirs},
        )
    foreign = "00000000-0000-1000-8000-000000000001"
    with esse3.begin() as conn:  # someone else put a number on the second badge meanwhile
        conn.execute(
            text('UPDATE "P01_BADGE" SET "ESC_ESCN" = :e WHERE "BDG_ID" = :b'), {"e": foreign, "b": theirs}
        )
    assert _again(rt) == {"written": 1, "quarantined": 1, "badges_carrying_escn": len(cards) - 1}
    badges = _badges(esse3)
    assert badges[closed][0] == cards[closed][0] and badges[closed][2] == "INACTIVE"
    assert badges[theirs][0] == foreign and badges[theirs][2] == "ACTIVE"  # untouched
    with rt.engine.connect() as conn:
        reasons = conn.execute(
            text("SELECT source_key, reason FROM quarantine WHERE stage = :s AND resolved_at IS NULL"),
            {"s": STAGE},
        ).all()
    assert reasons == [(str(theirs), ESCN_CONFLICT)]
    with esse3.begin() as conn:  # the site clears it: the next run writes it and resolves the quarantine
        conn.execute(text('UPDATE "P01_BADGE" SET "ESC_ESCN" = NULL WHERE "BDG_ID" = :b'), {"b": theirs})
    assert _again(rt)["written"] == 1 and _badges(esse3)[theirs][0] == cards[theirs][0]


def test_a_reminted_number_replaces_ours_and_a_deleted_badge_is_reported(world) -> None:
    rt, esse3 = world
    first, second, gone = sorted(_cards(rt))[:3]
    ours = _badges(esse3)[first][0]
    new, newer = "00000000-0000-1000-8000-000000000002", "00000000-0000-1000-8000-000000000003"
    source = rt.esse3("unife")

    def want(bdg_id: int, escn: str, **ours: str | None) -> BadgeWriteBack:
        return BadgeWriteBack(bdg_id, escn, f"https://s.esc-r.eu/{escn}", "ACTIVE", None, **ours)

    wanted = [want(first, new, previous_escn=ours), want(gone, new)]
    with esse3.begin() as conn:
        conn.execute(text('DELETE FROM "P01_BADGE" WHERE "BDG_ID" = :b'), {"b": gone})
    carried = source.write_back_badges(wanted, with_png=False)
    assert carried == {first: new}
    assert unwritten(wanted, carried) == {gone: BADGE_GONE}
    # A run that wrote `new` died before confirming it: recorded as pending, it is still ours.
    assert source.write_back_badges([want(first, newer, previous_escn=ours)], with_png=False) == {first: new}
    again = [want(first, newer, previous_escn=ours, pending_escn=new)]
    assert source.write_back_badges(again, with_png=False) == {first: newer}
    assert _badges(esse3)[second][0] not in (new, newer)  # nobody else touched


def test_the_write_is_recorded_before_esse3_and_confirmed_after(world, monkeypatch) -> None:
    """A crash between the Esse3 write and its confirmation leaves the number recorded as being
    written; the rerun confirms it (the update is idempotent) and clears the record."""
    from etl.store import badge_write_back as store

    rt, esse3 = world
    closed = sorted(_cards(rt))[0]
    with rt.engine.begin() as conn:
        conn.execute(text("UPDATE cards SET router_status = 'INACTIVE' WHERE bdg_id = :b"), {"b": closed})

    def crash(*args: object, **kwargs: object) -> None:
        raise RuntimeError("killed between the Esse3 write and its confirmation")

    monkeypatch.setattr(store, "record_written", crash)
    with pytest.raises(RuntimeError, match="killed"):
        _again(rt)
    assert _badges(esse3)[closed][2] == "INACTIVE"  # Esse3 was written
    with rt.engine.connect() as conn:
        row = conn.execute(
            text("SELECT escn, pending_escn FROM badge_write_backs WHERE bdg_id = :b"), {"b": closed}
        ).one()
    assert row.pending_escn == _cards(rt)[closed][0] == row.escn  # the same number, being rewritten
    monkeypatch.undo()
    assert _again(rt)["written"] == 1
    with rt.engine.connect() as conn:
        assert (
            conn.execute(
                text("SELECT pending_escn FROM badge_write_backs WHERE bdg_id = :b"), {"b": closed}
            ).scalar_one()
            is None
        )


def test_unwritten_names_conflicts_and_missing_badges() -> None:
    w = [BadgeWriteBack(i, f"e{i}", "u", "ACTIVE", None, None) for i in (1, 2, 3)]
    assert unwritten(w, {1: "e1", 2: "other"}) == {2: ESCN_CONFLICT, 3: BADGE_GONE}
    assert w[0].digest() != replace(w[0], status="INACTIVE").digest() != replace(w[0], with_png=True).digest()
