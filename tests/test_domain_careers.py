"""Career validation, the finalised-enrolment rule and academic levels: pure functions, no I/O."""

from __future__ import annotations

import datetime as dt

import pytest

from etl.domain.careers import CareerRecord, CareerRules, Rejection, map_career
from etl.domain.enrolment import FinalisedRule
from etl.domain.levels import academic_level

TODAY = dt.date(2026, 11, 2)
RULES = CareerRules(FinalisedRule(), {"TIT": "graduated", "RIN": "withdrawn"})


def row(**over: object) -> dict:
    base = {
        "STU_ID": 7,
        "PERS_ID": 70,
        "ANAPER_PERS_ID": 70,
        "MATRICOLA": "100007",
        "CDS_ID": 3,
        "AA_ID": 2024,
        "DATA_IMM": dt.date(2024, 9, 20),
        "STA_STU_COD": "A",
        "MOT_STASTU_COD": None,
        "DATA_CHIUSURA": None,
        "CODICE_ESI": None,
        "COGNOME": "Rossi",
        "NOME": "Giulia",
        "EMAIL": "g@gmail.com",
        "EMAIL_ATE": "giulia.rossi@studenti.unife.it",
        "CONSENSO_ESC": "S",
        "CDS_COD": "IC",
        "CDS_DES": "Ingegneria Civile",
        "TIPO_CORSO_COD": "L2",
    }
    base.update(over)
    return base


def test_good_row_maps_to_record() -> None:
    r = map_career(row(), RULES, TODAY)
    assert isinstance(r, CareerRecord)
    assert (r.finalised, r.academic_level, r.email, r.person_key) == (
        True,
        "BACHELOR",
        "giulia.rossi@studenti.unife.it",
        "70",
    )
    assert r.row_hash() == map_career(row(), RULES, TODAY).row_hash()
    assert r.row_hash() != map_career(row(NOME="Giulio"), RULES, TODAY).row_hash()


@pytest.mark.parametrize(
    ("over", "reason"),
    [
        ({"NOME": None}, "missing name (NOME/COGNOME)"),
        ({"COGNOME": "  "}, "missing name (NOME/COGNOME)"),
        ({"EMAIL_ATE": "giulia@@unife"}, "malformed e-mail (EMAIL_ATE)"),
        ({"EMAIL_ATE": None, "EMAIL": "no-at-sign"}, "malformed e-mail (EMAIL)"),
        ({"DATA_IMM": dt.date(2026, 12, 1)}, "enrolment dated in the future (DATA_IMM)"),
        ({"CDS_COD": None, "CDS_ID": 999}, "unknown course CDS_ID=999"),
        ({"CDS_COD": "  ", "CDS_ID": 998}, "unknown course CDS_ID=998"),  # blank on PostgreSQL/SQLite
        ({"MATRICOLA": None}, "missing matricola"),
        ({"ANAPER_PERS_ID": None, "NOME": None, "COGNOME": None}, "person missing from P01_ANAPER"),
        ({"STA_STU_COD": "X", "MOT_STASTU_COD": "ZZZ"}, "unmapped closing reason 'ZZZ'"),
        ({"STA_STU_COD": "X"}, "closed career without a closing reason"),
        ({"STA_STU_COD": "Q"}, "unknown status 'Q'"),
    ],
)
def test_bad_rows_are_rejected_with_a_precise_reason(over: dict, reason: str) -> None:
    r = map_career(row(**over), RULES, TODAY)
    assert isinstance(r, Rejection)
    assert r.stu_id == 7
    assert any(x.startswith(reason) for x in r.reasons), r.reasons


def test_reasons_never_quote_personal_data() -> None:
    r = map_career(row(EMAIL_ATE="giulia@@unife", NOME=None), RULES, TODAY)
    assert isinstance(r, Rejection) and len(r.reasons) == 2
    assert "giulia" not in r.reason.lower() and "rossi" not in r.reason.lower()


def test_closed_career_maps_category_and_keeps_closing_date() -> None:
    r = map_career(
        row(STA_STU_COD="X", MOT_STASTU_COD="TIT", DATA_CHIUSURA=dt.date(2025, 7, 1)), RULES, TODAY
    )
    assert isinstance(r, CareerRecord)
    assert (r.closing_category, r.closing_date, r.finalised) == ("graduated", dt.date(2025, 7, 1), True)


@pytest.mark.parametrize(
    ("status", "date", "require", "expected"),
    [
        ("A", dt.date(2024, 9, 1), True, True),
        ("S", dt.date(2024, 9, 1), True, True),
        ("X", dt.date(2024, 9, 1), True, True),
        ("I", dt.date(2024, 9, 1), True, False),
        ("A", None, True, False),
        ("A", None, False, True),
        (None, None, False, False),
    ],
)
def test_finalised_rule(status, date, require, expected) -> None:
    assert FinalisedRule(require_enrolment_date=require).is_finalised(status, date) is expected


def test_provisional_career_is_kept_but_not_finalised() -> None:
    r = map_career(row(STA_STU_COD="I", DATA_IMM=None), RULES, TODAY)
    assert isinstance(r, CareerRecord) and r.finalised is False


@pytest.mark.parametrize(
    ("tipo", "level"),
    [
        ("L2", "BACHELOR"),
        ("lm", "MASTER"),
        ("LM5", "MASTER"),
        ("LM6", "MASTER"),
        ("D", "DOCTORATE"),
        ("CS", None),
        (None, None),
        ("", None),
    ],
)
def test_academic_level(tipo, level) -> None:
    assert academic_level(tipo) == level


def test_overlong_values_are_rejected_naming_the_field_not_the_value() -> None:
    r = map_career(row(COGNOME="R" * 101, MATRICOLA="9" * 21), RULES, TODAY)
    assert isinstance(r, Rejection)
    assert set(r.reasons) == {"COGNOME longer than 100 characters", "MATRICOLA longer than 20 characters"}
    assert "RRR" not in r.reason
    assert isinstance(map_career(row(COGNOME="R" * 100), RULES, TODAY), CareerRecord)


def test_length_limits_match_the_state_db_columns() -> None:
    from etl.domain.careers import EMAIL_MAX_LENGTH, MAX_LENGTHS
    from etl.store.models import Career

    column_of = {
        "MATRICOLA": "matricola",
        "CDS_COD": "course_code",
        "CDS_DES": "course_name",
        "TIPO_CORSO_COD": "course_type",
        "MOT_STASTU_COD": "closing_reason",
        "NOME": "first_name",
        "COGNOME": "last_name",
        "CONSENSO_ESC": "consent",
        "CODICE_ESI": "source_esi",
    }
    assert set(MAX_LENGTHS) == set(column_of)
    for source, column in column_of.items():
        assert Career.__table__.c[column].type.length == MAX_LENGTHS[source], source
    assert Career.__table__.c["email"].type.length == EMAIL_MAX_LENGTH


def test_row_hash_is_stable_across_releases() -> None:
    """Stored hashes decide what is re-written: a changed formula would rewrite every career once."""
    r = map_career(row(), RULES, TODAY)
    assert r.row_hash() == "d81e8622a0de293d1a56159db2d509ac"
