"""Card lifecycle decisions and person planning: pure functions, no I/O."""

from __future__ import annotations

import datetime as dt
import tomllib
from pathlib import Path

import pytest

from etl.config import parse_settings
from etl.demo.config import demo_config_toml
from etl.domain.lifecycle import (
    ACTIVE,
    INACTIVE,
    Action,
    BadgeFacts,
    CardTarget,
    body_hash,
    card_action,
    card_target,
    consented,
)
from etl.domain.person_plan import PersonCandidate, plan_persons

TODAY = dt.date(2026, 11, 2)
FROM, TO = dt.date(2024, 9, 20), dt.date(2027, 10, 31)


def facts(**over) -> BadgeFacts:
    base = {"career_status": "A", "annulled": False, "valid_from": FROM, "valid_to": TO, "consented": True}
    return BadgeFacts(**(base | over))


def test_active_career_gets_an_active_card_until_the_badge_ends() -> None:
    assert card_target(facts(), TODAY) == CardTarget(ACTIVE, TO)
    assert card_target(facts(career_status="S"), TODAY) == CardTarget(ACTIVE, TO)


@pytest.mark.parametrize("over", [{"career_status": "X"}, {"annulled": True}, {"consented": False}])
def test_closure_annulment_or_no_consent_deactivate(over) -> None:
    assert card_target(facts(**over), TODAY) == CardTarget(INACTIVE, TO)


def test_an_expired_badge_is_never_extended_and_is_reported() -> None:
    old_end = dt.date(2025, 10, 31)
    target = card_target(facts(valid_to=old_end), TODAY)
    assert target == CardTarget(ACTIVE, old_end)  # the badge's own validity, not a new one
    assert card_action(target, exists=False, synced=None, today=TODAY) is Action.BADGE_EXPIRED
    # the university renews the badge (DATA_FIN): the card comes back with the new validity
    renewed = card_target(facts(valid_to=dt.date(2027, 10, 31)), TODAY)
    assert (
        card_action(renewed, exists=True, synced=CardTarget(INACTIVE, old_end), today=TODAY) is Action.UPDATE
    )


def test_card_actions() -> None:
    active, inactive = CardTarget(ACTIVE, TO), CardTarget(INACTIVE, TO)

    def action(target: CardTarget, exists: bool, synced: CardTarget | None) -> Action:
        return card_action(target, exists=exists, synced=synced, today=TODAY)

    assert action(active, False, None) is Action.REGISTER
    assert action(inactive, False, None) is Action.SKIP  # never register a dead card
    assert action(active, True, None) is Action.REGISTER  # recorded, never confirmed
    assert action(active, True, active) is Action.NONE
    assert action(inactive, True, active) is Action.UPDATE  # closure → PUT INACTIVE
    assert action(CardTarget(ACTIVE, dt.date(2028, 1, 1)), True, active) is Action.UPDATE


def test_an_expired_card_is_only_touched_to_revive_it() -> None:
    """The Router refuses a PUT on an EXPIRED card without a future expiry."""
    ran_out = dt.date(2025, 10, 31)
    expired_active = CardTarget(ACTIVE, ran_out)
    closed_after = card_target(facts(career_status="X", valid_to=ran_out), TODAY)
    assert closed_after == CardTarget(INACTIVE, ran_out)
    assert card_action(closed_after, exists=True, synced=expired_active, today=TODAY) is Action.NONE
    # reactivated and the badge renewed: a new future expiry, so the PUT revives it
    revived = card_target(facts(valid_to=TO), TODAY)
    assert revived.expires_at > TODAY
    assert card_action(revived, exists=True, synced=expired_active, today=TODAY) is Action.UPDATE
    # still valid at the Router: a closure with a past expiry is a plain PUT
    live = CardTarget(ACTIVE, TO)
    assert card_action(closed_after, exists=True, synced=live, today=TODAY) is Action.UPDATE


def test_consent_modes() -> None:
    assert consented("automatic", None)
    assert consented("opt_in", "S") and consented("opt_in", "s")
    assert not consented("opt_in", None) and not consented("opt_in", "N")


def test_body_hash_is_order_independent() -> None:
    assert body_hash({"a": 1, "b": [1, 2]}) == body_hash({"b": [1, 2], "a": 1})
    assert body_hash({"a": 1}) != body_hash({"a": 2})


def _ateneo(code: str = "unife"):
    raw = tomllib.loads(demo_config_toml())
    return parse_settings(raw, home=Path("."), database_url="sqlite://", config_path=Path("x")).ateneo(code)


def row(**over: object) -> PersonCandidate:
    base = PersonCandidate(
        pers_id=70,
        person_key="70",
        stu_id=7,
        first_name="Giulia",
        last_name="Rossi",
        email="g.rossi@studenti.unife.it",
        academic_level="BACHELOR",
        consent=None,
        course_type="L2",
        esi=None,
        state=None,
        synced_hash=None,
    )
    return base._replace(**over)


def test_plan_persons_composes_esi_from_the_person_key_and_decides() -> None:
    plan = plan_persons([row()], _ateneo())
    [w] = plan.work
    assert w.esi == "urn:schac:personalUniqueCode:int:esi:unife.it:70"
    assert w.create and w.body["personOrganisationUpdateViews"][0]["organisationIdentifier"] == "999978433"
    # Registered with the same body: nothing to do. A changed name: PUT, same ESI.
    same = plan_persons([row(esi=w.esi, state="registered", synced_hash=w.body_hash)], _ateneo())
    assert same.work == [] and same.fine == [7]
    renamed = plan_persons(
        [row(esi=w.esi, state="registered", synced_hash=w.body_hash, first_name="Giuliana")], _ateneo()
    )
    assert [(x.esi, x.create) for x in renamed.work] == [(w.esi, False)]


def test_plan_persons_consent_eligibility_and_bad_data() -> None:
    unipa = _ateneo("unipa")  # opt_in
    assert plan_persons([row(consent=None)], unipa).opted_out and not plan_persons([row()], unipa).work
    assert plan_persons([row(consent="S")], unipa).work
    not_eligible = plan_persons([row(academic_level=None, course_type="CS")], _ateneo())
    assert not_eligible.work == [] and not_eligible.rejections == [] and not_eligible.not_eligible == 1
    bad = plan_persons([row(person_key="70 71")], _ateneo())
    assert bad.rejections and "cannot compose ESI" in bad.rejections[0].reason
