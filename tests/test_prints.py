"""Print sheets of physical badges: only active printed cards, one PDF per partition, rewritten
only when what would be printed changes."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import update

from etl.assets.prints import write_badge_sheets
from etl.partitions import Partition
from etl.resources.runtime import Runtime
from etl.store.models import Card
from tests.test_qr_asset import PART, seed_cards

TODAY = dt.date(2025, 1, 10)


def test_sheet_holds_active_printed_cards_and_is_rewritten_only_on_change(sqlite_runtime: Runtime) -> None:
    rt = sqlite_runtime
    escns = seed_cards(rt.engine, range(12))
    seed_cards(rt.engine, [50], state="pending")  # not at the Router yet: never printed
    with rt.engine.begin() as conn:  # 11 printed badges, one virtual, one of them deactivated
        conn.execute(update(Card).values(card_type="PASSIVE"))
        conn.execute(update(Card).where(Card.escn == escns[0]).values(card_type="SMART_PASSIVE"))
        conn.execute(update(Card).where(Card.escn == escns[1]).values(desired_status="INACTIVE"))
    path, n = write_badge_sheets(rt.engine, rt.settings, PART, today=TODAY)
    assert n == 10 and path is not None and path.exists()
    data = path.read_bytes()
    assert data.startswith(b"%PDF") and b"/MediaBox [0 0 595.28 841.89]" in data
    same, _ = write_badge_sheets(rt.engine, rt.settings, PART, today=TODAY)
    assert same == path and same.stat().st_mtime == path.stat().st_mtime
    with rt.engine.begin() as conn:
        conn.execute(update(Card).where(Card.escn == escns[1]).values(desired_status="ACTIVE"))
    changed, n = write_badge_sheets(rt.engine, rt.settings, PART, today=TODAY)
    assert n == 11 and changed != path and not path.exists()  # only the current sheet is kept
    assert write_badge_sheets(rt.engine, rt.settings, Partition(2019, "unife"), today=TODAY) == (None, 0)


def test_print_rules_take_active_valid_physical_cards_and_a_digest_that_follows_them() -> None:
    from etl.domain.prints import printable, sheet_digest

    today = dt.date(2026, 1, 10)
    assert printable("PASSIVE", "ACTIVE", today, today)
    assert not printable("SMART_PASSIVE", "ACTIVE", today, today)  # virtual badges are never printed
    assert not printable("PASSIVE", "INACTIVE", today, today)
    assert not printable("PASSIVE", "ACTIVE", today - dt.timedelta(days=1), today)  # expired yesterday
    card = ("e1", "Ana", today, "ACTIVE")
    assert sheet_digest([card]) == sheet_digest([card]) != sheet_digest([(*card[:3], "INACTIVE")])
