"""Reconciliation rules (etl.domain.reconcile): pure, no I/O."""

from __future__ import annotations

import datetime as dt

from etl.domain.reconcile import CardView, find_drift

TODAY = dt.date(2026, 12, 4)
A, B, C = "urn:schac:personalUniqueCode:int:esi:unife.it:a", "…:b", "…:c"


def card(
    esi: str, status: str = "ACTIVE", expires: dt.date = dt.date(2027, 9, 30), kind: str = "PASSIVE"
) -> CardView:
    return CardView(esi, status, expires, kind)


def test_the_same_on_both_sides_is_no_drift() -> None:
    cards = {"n1": card(A), "n2": card(B, "INACTIVE")}
    drift = find_drift({A, B}, cards, {A, B}, dict(cards), TODAY)
    assert drift.counts() == dict.fromkeys(drift.counts(), 0)
    assert drift.repairable == drift.reported_only == 0


def test_each_kind_of_drift_is_found_and_sorted_by_what_can_be_repaired() -> None:
    local = {"n1": card(A), "n2": card(B), "n3": card(A), "n4": card(B)}
    remote = {
        "n1": card(A),  # in step
        "n3": card(A, "INACTIVE"),  # status changed at the Router behind our back: stale
        "n4": card(A),  # now on another person: mismatched (no rule says who is right)
        "n9": card(C),  # never registered by us: unknown
    }
    # B's person is ours without a card at the Router yet (normal); "lonely" is nobody's we know
    drift = find_drift({A, B}, local, {A, B, C, "urn:x:lonely"}, remote, TODAY)
    assert find_drift({A, B}, local, {A, C}, remote, TODAY).missing_persons == [B]  # absent there
    assert drift.missing_cards == ["n2"]
    assert drift.stale_cards == {"n3": card(A, "INACTIVE")}
    assert drift.mismatched_cards == ["n4"]
    assert drift.unknown_cards == ["n9"]
    assert drift.persons_without_cards == ["urn:x:lonely"]
    assert (drift.repairable, drift.reported_only) == (2, 3)


def test_an_expired_card_reads_expired_at_the_router_and_that_is_no_drift() -> None:
    ended = dt.date(2026, 9, 30)
    drift = find_drift({A}, {"n1": card(A, "ACTIVE", ended)}, {A}, {"n1": card(A, "EXPIRED", ended)}, TODAY)
    assert drift.stale_cards == {}
    other_expiry = find_drift({A}, {"n1": card(A)}, {A}, {"n1": card(A, expires=dt.date(2028, 1, 1))}, TODAY)
    assert list(other_expiry.stale_cards) == ["n1"]
