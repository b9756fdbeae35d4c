"""Raw Esse3 values: keys, names and change dates (pure rules, no I/O)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from etl.domain.source_values import (
    future_cutoff,
    in_the_future,
    key_problem,
    quarantine_key,
    text_problem,
)
from etl.exports.writer import neutralise_cell


@pytest.mark.parametrize("value", [1, 191275, 2**31 - 1, Decimal("42"), Decimal("42.0")])
def test_exact_positive_keys_are_accepted(value: object) -> None:
    assert key_problem("STU_ID", value) is None


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (3.7, "not an exact integer key"),
        (3.0, "not an exact integer key"),  # a float from a NUMBER view: never int()-ed
        (1e20, "not an exact integer key"),
        ("42", "not an integer key (str)"),
        ("abc", "not an integer key (str)"),
        (True, "not an integer key (boolean)"),
        (Decimal("3.5"), "fractional"),
        (0, "not a positive key"),
        (-7, "not a positive key"),
        (2**31, "out of range"),
        (None, "missing STU_ID"),
    ],
)
def test_inexact_or_insane_keys_are_refused(value: object, problem: str) -> None:
    reason = key_problem("STU_ID", value)
    assert reason is not None and problem in reason
    if value is not None:
        assert str(value) not in reason  # reasons name the kind, not the value


def test_quarantine_key_names_any_value() -> None:
    assert [quarantine_key(v) for v in (42, Decimal("42"), 3.7, "B-1", 1e20)] == [
        "42",
        "42",
        "3.7",
        "B-1",
        "1e+20",
    ]
    assert len(quarantine_key("x" * 500)) == 64


@pytest.mark.parametrize(
    "text",
    ["Mario", "Zoë", "Δημήτρης", "Алексей", "محمد", "李小龍", "Anne\u00a0Marie", "क्\u200dष", "O'Brien-Smith"],
)
def test_real_names_pass(text: str) -> None:
    assert text_problem("NOME", text) is None


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("Ma\x00rio", "control"),
        ("Ma\x07rio", "control"),
        ("Ma\x85rio", "control"),  # C1
        ("Ma\nrio", "control"),
        ("Mario\u202eissoR", "bidirectional"),
        ("\u2066Rossi", "bidirectional"),
        ("Rossi\u200f", "bidirectional"),
        ("Ros\ue000si", "private-use"),
        ("Ros\U0010fffesi", "unassigned"),  # a noncharacter
    ],
)
def test_control_bidi_and_private_characters_are_refused(text: str, kind: str) -> None:
    reason = text_problem("NOME", text)
    assert reason is not None and kind in reason and text not in reason


def test_a_change_date_is_believed_up_to_the_skew() -> None:
    now = dt.datetime(2026, 12, 4, 10, 0)
    cutoff = future_cutoff(now, dt.timedelta(minutes=15))
    assert not in_the_future(now + dt.timedelta(minutes=14), cutoff)
    assert in_the_future(now + dt.timedelta(minutes=16), cutoff)
    assert in_the_future(dt.datetime(2100, 1, 1), cutoff) and not in_the_future(None, cutoff)


@pytest.mark.parametrize("cell", ['=HYPERLINK("x")', "+1", "-1+2", "@SUM(A1)", "\tx", "\rx"])
def test_csv_cells_that_would_run_as_formulas_are_neutralised(cell: str) -> None:
    assert neutralise_cell(cell) == "'" + cell


@pytest.mark.parametrize("cell", ["Mario", "c3ddd400-d3ef-103e-9234-001999978433", -1, 3.5, None])
def test_other_cells_are_left_alone(cell: object) -> None:
    assert neutralise_cell(cell) == cell
