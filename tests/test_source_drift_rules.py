"""Issue 19's pure rules, no I/O: Esse3's clock around the changes of time in Europe/Rome, digests and
drift, the mass-deletion guard, change detection by row counts, retired cards, NFC."""

from __future__ import annotations

import datetime as dt
import tomllib
import unicodedata
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from etl.changes import RepeatClock, changed_partitions
from etl.config import parse_settings
from etl.demo.config import demo_config_toml
from etl.domain.card_plan import CardCandidate, RetiredCard, cards_to_retire, plan_cards
from etl.domain.careers import CareerRules, map_career
from etl.domain.enrolment import FinalisedRule
from etl.domain.escn import EscnMinter
from etl.domain.esse3_time import esse3_now, inside_repeat, read_since, repeat_length
from etl.domain.router_bodies import person_body
from etl.domain.source_drift import compare, digest, guard_reason, suspects
from etl.errors import ConfigError
from etl.resources.esse3 import ChangeMarker

ROME = ZoneInfo("Europe/Rome")
OVERLAP = dt.timedelta(minutes=10)
TODAY = dt.date(2026, 11, 2)


def test_esse3_now_is_the_wall_clock_of_esse3s_zone() -> None:
    before_spring = dt.datetime(2026, 3, 29, 0, 59, tzinfo=dt.UTC)  # 01:59 CET
    after_spring = dt.datetime(2026, 3, 29, 1, 5, tzinfo=dt.UTC)  # 03:05 CEST: 02:xx never happens
    assert esse3_now(ROME, before_spring) == dt.datetime(2026, 3, 29, 1, 59)
    assert esse3_now(ROME, after_spring) == dt.datetime(2026, 3, 29, 3, 5)
    first = dt.datetime(2026, 10, 25, 0, 30, tzinfo=dt.UTC)  # 02:30 CEST
    second = dt.datetime(2026, 10, 25, 1, 30, tzinfo=dt.UTC)  # 02:30 CET, an hour later
    assert esse3_now(ROME, first) == esse3_now(ROME, second) == dt.datetime(2026, 10, 25, 2, 30)


def test_only_the_autumn_hour_repeats() -> None:
    assert repeat_length(dt.datetime(2026, 10, 25, 2, 30), ROME) == dt.timedelta(hours=1)
    for t in (
        dt.datetime(2026, 10, 25, 1, 59),
        dt.datetime(2026, 10, 25, 3, 0),
        dt.datetime(2026, 3, 29, 2, 30),
    ):
        assert repeat_length(t, ROME) == dt.timedelta(0)


@pytest.mark.parametrize(
    ("watermark", "since"),
    [
        # an ordinary night: the overlap only
        (dt.datetime(2026, 10, 24, 2, 50), dt.datetime(2026, 10, 24, 2, 40)),
        # inside the repeated hour: a whole hour further back, so its second pass is read
        (dt.datetime(2026, 10, 25, 2, 50), dt.datetime(2026, 10, 25, 1, 40)),
        (dt.datetime(2026, 10, 25, 2, 5), dt.datetime(2026, 10, 25, 0, 55)),
        # just after it, the overlap reaching back into it
        (dt.datetime(2026, 10, 25, 3, 5), dt.datetime(2026, 10, 25, 1, 55)),
        # spring: naive arithmetic steps over the hour that never happens
        (dt.datetime(2026, 3, 29, 3, 5), dt.datetime(2026, 3, 29, 2, 55)),
    ],
)
def test_read_since_never_skips_the_repeated_hour(watermark: dt.datetime, since: dt.datetime) -> None:
    assert read_since(watermark, OVERLAP, ROME) == since
    assert read_since(watermark, OVERLAP, ZoneInfo("UTC")) == watermark - OVERLAP


def test_a_partition_is_read_again_while_esse3s_clock_is_in_the_repeated_hour() -> None:
    mark = dt.datetime(2026, 10, 25, 2, 50)  # set in the first pass
    assert inside_repeat(mark, dt.datetime(2026, 10, 25, 2, 35), OVERLAP, ROME)  # second pass, 02:35 CET
    assert not inside_repeat(mark, dt.datetime(2026, 10, 25, 3, 20), OVERLAP, ROME)  # the hour is over
    assert not inside_repeat(
        dt.datetime(2026, 10, 24, 2, 50), dt.datetime(2026, 10, 24, 2, 55), OVERLAP, ROME
    )
    markers = [ChangeMarker(2025, "P01_STU", mark, 10)]
    watermarks = {("2025|unife", "P01_STU"): mark}
    counts = {("2025|unife", "P01_STU"): 10}
    in_hour = RepeatClock.at(ROME, OVERLAP, dt.datetime(2026, 10, 25, 2, 36, tzinfo=ROME, fold=1))
    later = RepeatClock.at(ROME, OVERLAP, dt.datetime(2026, 10, 25, 2, 41, tzinfo=ROME, fold=1))
    [a] = changed_partitions("unife", markers, watermarks, [2025], ["P01_STU"], counts, in_hour)
    [b] = changed_partitions("unife", markers, watermarks, [2025], ["P01_STU"], counts, later)
    assert a.run_key != b.run_key  # a new run every five minutes of the hour
    after = RepeatClock.at(ROME, OVERLAP, dt.datetime(2026, 10, 25, 3, 20, tzinfo=ROME))
    assert changed_partitions("unife", markers, watermarks, [2025], ["P01_STU"], counts, after) == []


def test_a_moved_row_count_is_a_change_with_its_own_run_key() -> None:
    t = dt.datetime(2026, 12, 4, 10, 0)
    markers = [ChangeMarker(2025, "P01_STU", t, 100), ChangeMarker(2025, "P01_BADGE", t, 90)]
    marks = {("2025|unife", "P01_STU"): t, ("2025|unife", "P01_BADGE"): t}
    same = {("2025|unife", "P01_STU"): 100, ("2025|unife", "P01_BADGE"): 90}
    tables = ["P01_STU", "P01_BADGE"]
    assert changed_partitions("unife", markers, marks, [2025], tables, same) == []
    # a late insert: one row more, the newest DATA_MOD unchanged
    [late] = changed_partitions(
        "unife", markers, marks, [2025], tables, {**same, ("2025|unife", "P01_STU"): 99}
    )
    assert late.run_key == "2025|unife@2026-12-04T10:00:00#100/90"
    # Esse3 returns nothing for a year we hold rows of: a change (the run's guard decides what it means)
    [empty] = changed_partitions("unife", [], marks, [2025], tables, same)
    assert empty.rows == (0, 0)
    # never compared yet (an upgraded deployment): one run to compare
    assert changed_partitions("unife", markers, marks, [2025], tables, {})


def test_drift_by_key_and_digest() -> None:
    local = {1: digest((1, "a")), 2: digest((2, "b")), 3: None, 4: digest((4, "d"))}
    source = {1: digest((1, "a")), 2: digest((2, "B")), 3: digest((3, "c")), 5: digest((5, "e")), 6: "x"}
    assert suspects(source, local) == [2, 3]
    drift = compare(source, local, known={6}, same_content={3})
    assert drift.missing == [5]  # 6 is quarantined: re-read by every run anyway
    assert drift.changed == [2]  # 3's digest was never kept, its content is the same
    assert drift.vanished == [4]
    assert digest((None,)) != digest(("None",))


@pytest.mark.parametrize(
    ("vanished", "total", "source_rows", "held"),
    [(0, 100, 100, False), (1, 100, 99, False), (1, 3, 2, False), (5, 100, 95, False), (6, 100, 94, True),
     (20, 100, 80, True), (1, 1, 0, True), (100, 100, 0, True)],
)  # fmt: skip
def test_the_guard(vanished: int, total: int, source_rows: int, held: bool) -> None:
    reason = guard_reason("careers", vanished, total, 0.05, source_rows)
    assert (reason is not None) == held
    if source_rows == 0 and vanished:
        assert reason == f"Esse3 returns no careers row for the partition, which held {total}"


def _settings(**esse3: object):  # type: ignore[no-untyped-def]
    raw = tomllib.loads(demo_config_toml())
    raw["esse3"] = esse3
    return parse_settings(raw, home=Path("."), database_url="sqlite://", config_path=Path("x"))


def test_esse3_timezone_and_vanished_share_are_validated() -> None:
    assert _settings(timezone="Europe/Rome", max_vanished_share=0.1).read_policy.zone == ROME
    assert _settings().esse3_timezone  # the machine's zone
    with pytest.raises(ConfigError, match="esse3: field timezone: 'Europe/Ferrara' is not an IANA time zone"):
        _settings(timezone="Europe/Ferrara")
    with pytest.raises(ConfigError, match="esse3: field max_vanished_share"):
        _settings(max_vanished_share=1.5)


def card(**over: object) -> CardCandidate:
    base = CardCandidate(
        bdg_id=1, stu_id=10, kind="V", valid_from=dt.date(2025, 9, 1), valid_to=dt.date(2027, 10, 31),
        annulled=False, career_status="A", consent=None,
        esi="urn:schac:personalUniqueCode:int:esi:unife.it:2",
        person_state="registered", escn=None, card_state=None, router_status=None, synced_expiry=None,
        desired_status=None, card_esi=None, in_source=True,
    )  # fmt: skip
    return base._replace(**over)


def _ateneo():  # type: ignore[no-untyped-def]
    return _settings().ateneo("unife")


def test_a_card_of_another_person_is_retired_and_the_badge_gets_a_new_one() -> None:
    old = "URN:schac:personalUniqueCode:int:esi:unife.it:1"
    escn = "c3ddd400-d3ef-103e-9234-001999978433"
    merged = card(escn=escn, card_esi=old, card_state="registered", router_status="ACTIVE",
                  synced_expiry=dt.date(2027, 10, 31), desired_status="ACTIVE")  # fmt: skip
    assert cards_to_retire([merged]) == [escn]
    assert cards_to_retire([merged._replace(esi=None, person_state=None)]) == [escn]  # no ESI for the new one
    same_person = "URN:SCHAC:PERSONALUNIQUECODE:INT:ESI:unife.it:2"  # the prefix is case-insensitive
    assert cards_to_retire([merged._replace(card_esi=same_person)]) == []
    # after retirement: the badge has no current card → a new one under the new person's ESI ...
    minter = EscnMinter("999978433", 1, clock_seq=5)
    retired = RetiredCard(escn, 1, 10, old, "SMART_PASSIVE", dt.date(2025, 9, 1), dt.date(2027, 10, 31),
                          "registered", "ACTIVE")  # fmt: skip
    plan = plan_cards([card()], _ateneo(), minter, TODAY, [retired])
    new, old_card = plan.work
    assert new.create and new.esi == card().esi and new.escn != escn
    # ... and the old card goes INACTIVE under its own ESI (a PUT: the Router knows it)
    assert (old_card.escn, old_card.esi, old_card.create) == (escn, old, False)
    assert old_card.put_body["cardStatusType"] == "INACTIVE"
    done = retired._replace(router_status="INACTIVE")
    assert plan_cards([], _ateneo(), minter, TODAY, [done]).work == []


def test_a_deleted_badge_or_career_deactivates_its_card() -> None:
    live = card(escn="c3ddd400-d3ef-103e-9234-001999978433", card_esi=card().esi, card_state="registered",
                router_status="ACTIVE", synced_expiry=dt.date(2027, 10, 31))  # fmt: skip
    minter = EscnMinter("999978433", 1, clock_seq=5)
    assert plan_cards([live], _ateneo(), minter, TODAY).work == []
    [w] = plan_cards([live._replace(in_source=False)], _ateneo(), minter, TODAY).work
    assert w.put_body["cardStatusType"] == "INACTIVE" and not w.create


def test_names_and_emails_reach_the_router_in_nfc() -> None:
    nfd = unicodedata.normalize("NFD", "Nicolò Ćosić")
    assert nfd != "Nicolò Ćosić"
    body = person_body("urn:schac:personalUniqueCode:int:esi:unife.it:2", "999978433", nfd, None, "BACHELOR")
    assert body["personOrganisationUpdateViews"][0]["fullName"] == "Nicolò Ćosić"
    rules = CareerRules(FinalisedRule(frozenset("ASX"), True), {})
    row = {
        "STU_ID": 1, "PERS_ID": 2, "AA_ID": 2025, "ANAPER_PERS_ID": 2,
        "NOME": unicodedata.normalize("NFD", "Nicolò"),
        "COGNOME": "Ćosić", "EMAIL": None, "EMAIL_ATE": None, "MATRICOLA": "1", "CDS_ID": 1, "CDS_COD": "L",
        "CDS_DES": "x", "TIPO_CORSO_COD": "L2", "DATA_IMM": dt.date(2025, 9, 1), "STA_STU_COD": "A",
        "MOT_STASTU_COD": None, "DATA_CHIUSURA": None, "CONSENSO_ESC": None, "CODICE_ESI": None,
    }  # fmt: skip
    composed = map_career({**row, "NOME": "Nicolò"}, rules, TODAY)
    decomposed = map_career(row, rules, TODAY)
    assert (
        decomposed == composed and decomposed.row_hash() == composed.row_hash()
    )  # a rename that is no rename
