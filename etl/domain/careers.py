"""From an Esse3 career row (joined with person and course) to a validated career record or the
precise reasons it is quarantined. Reasons never quote personal data: they name fields, not values."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from etl.domain.enrolment import FinalisedRule
from etl.domain.levels import academic_level
from etl.domain.source_values import key_problem, quarantine_key, text_problem

# The Esse3 tables a career row joins (P01_STU ⋈ P01_ANAPER ⋈ P06_CDS), each with its own DATA_MOD.
CAREER_TABLES = ("P01_STU", "P01_ANAPER", "P06_CDS")

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[A-Za-z]{2,}$")


@dataclass(frozen=True)
class CareerRules:
    """What validation needs from one university's configuration."""

    finalised: FinalisedRule
    closing_reasons: Mapping[str, str]


class CareerRecord(NamedTuple):
    """A NamedTuple, not a dataclass: ingestion builds and hashes 100,000s of these, and
    dataclasses' asdict/astuple deep-copy every field."""

    stu_id: int
    pers_id: int
    person_key: str
    matricola: str
    academic_year: int
    course_code: str
    course_name: str
    course_type: str
    academic_level: str | None
    status: str
    finalised: bool
    closing_reason: str | None
    closing_category: str | None
    enrolment_date: dt.date | None
    closing_date: dt.date | None
    first_name: str
    last_name: str
    email: str | None
    consent: str | None
    source_esi: str | None

    def row_hash(self) -> str:
        """Detects unchanged rows (the overlap window re-reads them) without comparing every column."""
        # tuple.__repr__: the plain tuple's text without copying the record into a tuple first.
        return hashlib.md5(tuple.__repr__(self).encode(), usedforsecurity=False).hexdigest()


# The career fields exports, the badge API and the feed show beside a card: a change to any of them moves
# the career's cards in the feed (cards.changed_at). Column names of the state DB's careers table.
SHOWN_FIELDS = ("matricola", "first_name", "last_name", "course_code", "course_name", "academic_year")


def shown_fields(record: CareerRecord) -> tuple[object, ...]:
    return tuple(getattr(record, f) for f in SHOWN_FIELDS)


@dataclass(frozen=True)
class Rejection:
    stu_id: int | str  # the row's key; its text when the key itself is unusable (say "3.7")
    reasons: tuple[str, ...]

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)


def _clean(v: Any) -> str | None:
    if v is None:
        return None
    s = (v if type(v) is str else str(v)).strip()
    return s or None


def _nfc(s: str | None) -> str | None:
    """Names and e-mails in Unicode NFC, the form the Router and every search expect: a name typed
    with decomposed accents ("e" + U+0301) is the same name, and a rename that only recomposes it
    changes nothing."""
    if s is None or s.isascii() or unicodedata.is_normalized("NFC", s):
        return s
    return unicodedata.normalize("NFC", s)


# The longest text each career column of the state DB holds (etl/store/models.py; a test keeps the two
# equal), keyed by the Esse3 column it comes from. PostgreSQL refuses a longer value and would fail the
# whole partition, so such a career is quarantined instead.
MAX_LENGTHS = {
    "MATRICOLA": 20,
    "CDS_COD": 20,
    "CDS_DES": 255,
    "TIPO_CORSO_COD": 10,
    "MOT_STASTU_COD": 10,
    "NOME": 100,
    "COGNOME": 100,
    "CONSENSO_ESC": 1,
    "CODICE_ESI": 255,
}
EMAIL_MAX_LENGTH = 255

# The columns map_career reads: what etl/sql/esse3/careers_*.sql must return, whatever a site adapts there.
SOURCE_COLUMNS = frozenset(
    (
        *("STU_ID", "PERS_ID", "MATRICOLA", "CDS_ID", "AA_ID", "DATA_IMM", "STA_STU_COD"),
        *("MOT_STASTU_COD", "DATA_CHIUSURA", "CODICE_ESI", "ANAPER_PERS_ID", "COGNOME", "NOME"),
        *("EMAIL", "EMAIL_ATE", "CONSENSO_ESC", "CDS_COD", "CDS_DES", "TIPO_CORSO_COD"),
    )
)


def map_career(row: Mapping[str, Any], rules: CareerRules, today: dt.date) -> CareerRecord | Rejection:
    """Validate one joined source row. Every problem is reported, not just the first.
    Runs for every career read (100,000s in a backfill): the record is built positionally, and
    only values that are stored are cleaned."""
    reasons: list[str] = [
        problem for column in ("STU_ID", "PERS_ID", "AA_ID") if (problem := key_problem(column, row[column]))
    ]
    raw_stu_id = row["STU_ID"]
    stu_id: int | str = quarantine_key(raw_stu_id) if key_problem("STU_ID", raw_stu_id) else int(raw_stu_id)
    has_person = row["ANAPER_PERS_ID"] is not None
    if not has_person:
        reasons.append("person missing from P01_ANAPER")
    first, last = _nfc(_clean(row["NOME"])), _nfc(_clean(row["COGNOME"]))
    if has_person and not (first and last):
        reasons.append("missing name (NOME/COGNOME)")

    # The institutional address is preferred; only the address used is validated.
    email, field = _nfc(_clean(row["EMAIL_ATE"])), "EMAIL_ATE"
    if email is None:
        email, field = _nfc(_clean(row["EMAIL"])), "EMAIL"
    if email is not None and (len(email) > EMAIL_MAX_LENGTH or not _EMAIL.match(email)):
        reasons.append(f"malformed e-mail ({field})")

    matricola = _clean(row["MATRICOLA"])
    if matricola is None:
        reasons.append("missing matricola")
    for column, text in (("NOME", first), ("COGNOME", last), (field, email), ("MATRICOLA", matricola)):
        if problem := text_problem(column, text):
            reasons.append(problem)
    course_code = _clean(row["CDS_COD"])  # an empty code is no course either
    if course_code is None:
        reasons.append(f"unknown course CDS_ID={row['CDS_ID']}")

    enrolment_date = row["DATA_IMM"]
    if enrolment_date is not None and enrolment_date > today:
        reasons.append("enrolment dated in the future (DATA_IMM)")

    status = _clean(row["STA_STU_COD"]) or ""
    closing_reason = closing_category = closing_date = None
    if status == "X":
        closing_reason = _clean(row["MOT_STASTU_COD"])
        closing_date = row["DATA_CHIUSURA"]
        if closing_reason is None:
            reasons.append("closed career without a closing reason (MOT_STASTU_COD)")
        elif closing_reason not in rules.closing_reasons:
            reasons.append(f"unmapped closing reason {closing_reason!r} (add it to closing_reasons)")
        else:
            closing_category = rules.closing_reasons[closing_reason]
    elif status not in ("A", "S", "I"):
        reasons.append(f"unknown status {status!r} (STA_STU_COD)")

    course_name, course_type = str(row["CDS_DES"] or ""), str(row["TIPO_CORSO_COD"] or "")
    consent, source_esi = _clean(row["CONSENSO_ESC"]), _clean(row["CODICE_ESI"])
    for column, value in (
        ("MATRICOLA", matricola),
        ("NOME", first),
        ("COGNOME", last),
        ("CDS_COD", course_code),
        ("CDS_DES", course_name),
        ("TIPO_CORSO_COD", course_type),
        ("MOT_STASTU_COD", closing_reason),
        ("CONSENSO_ESC", consent),
        ("CODICE_ESI", source_esi),
    ):
        if value is not None and len(value) > MAX_LENGTHS[column]:
            reasons.append(f"{column} longer than {MAX_LENGTHS[column]} characters")

    if reasons:
        return Rejection(stu_id, tuple(reasons))
    # No reason: every key is an integer and every required value present (tells the type checker).
    assert isinstance(stu_id, int) and matricola is not None and course_code is not None
    assert first is not None and last is not None
    pers_id = int(row["PERS_ID"])
    return CareerRecord(
        stu_id,
        pers_id,
        str(pers_id),  # person_key
        matricola,
        int(row["AA_ID"]),
        course_code,
        course_name,
        course_type,
        academic_level(course_type),
        status,
        rules.finalised.is_finalised(status, enrolment_date),
        closing_reason,
        closing_category,
        enrolment_date,
        closing_date,
        first,
        last,
        email,
        consent,
        source_esi,
    )
