"""From an Esse3 career row (joined with person and course) to a validated career record or the
precise reasons it is quarantined. Reasons never quote personal data: they name fields, not values."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from etl.domain.enrolment import FinalisedRule
from etl.domain.levels import academic_level

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
        return hashlib.md5(repr(tuple(self)).encode(), usedforsecurity=False).hexdigest()


@dataclass(frozen=True)
class Rejection:
    stu_id: int
    reasons: tuple[str, ...]

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)


def _clean(v: Any) -> str | None:
    if v is None:
        return None
    s = str(v).strip()
    return s or None


def map_career(row: Mapping[str, Any], rules: CareerRules, today: dt.date) -> CareerRecord | Rejection:
    """Validate one joined source row. Every problem is reported, not just the first."""
    reasons: list[str] = []
    stu_id = int(row["STU_ID"])
    if row.get("ANAPER_PERS_ID") is None:
        reasons.append("person missing from P01_ANAPER")
    first, last = _clean(row.get("NOME")), _clean(row.get("COGNOME"))
    if row.get("ANAPER_PERS_ID") is not None and not (first and last):
        reasons.append("missing name (NOME/COGNOME)")

    email = None
    for field in ("EMAIL_ATE", "EMAIL"):  # the institutional address is preferred
        value = _clean(row.get(field))
        if value is None:
            continue
        if not _EMAIL.match(value) or len(value) > 255:
            reasons.append(f"malformed e-mail ({field})")
        email = email or value
        break

    matricola = _clean(row.get("MATRICOLA"))
    if matricola is None:
        reasons.append("missing matricola")
    if row.get("CDS_COD") is None:
        reasons.append(f"unknown course CDS_ID={row.get('CDS_ID')}")

    enrolment_date = row.get("DATA_IMM")
    if enrolment_date is not None and enrolment_date > today:
        reasons.append("enrolment dated in the future (DATA_IMM)")

    status = _clean(row.get("STA_STU_COD")) or ""
    closing_reason = _clean(row.get("MOT_STASTU_COD"))
    closing_category = None
    if status == "X":
        if closing_reason is None:
            reasons.append("closed career without a closing reason (MOT_STASTU_COD)")
        elif closing_reason not in rules.closing_reasons:
            reasons.append(f"unmapped closing reason {closing_reason!r} (add it to closing_reasons)")
        else:
            closing_category = rules.closing_reasons[closing_reason]
    elif status not in ("A", "S", "I"):
        reasons.append(f"unknown status {status!r} (STA_STU_COD)")

    if reasons:
        return Rejection(stu_id, tuple(reasons))
    course_type = str(row["TIPO_CORSO_COD"])
    return CareerRecord(
        stu_id=stu_id,
        pers_id=int(row["PERS_ID"]),
        person_key=str(row["PERS_ID"]),
        matricola=matricola,  # type: ignore[arg-type]
        academic_year=int(row["AA_ID"]),
        course_code=str(row["CDS_COD"]),
        course_name=str(row["CDS_DES"]),
        course_type=course_type,
        academic_level=academic_level(course_type),
        status=status,
        finalised=rules.finalised.is_finalised(status, enrolment_date),
        closing_reason=closing_reason if status == "X" else None,
        closing_category=closing_category,
        enrolment_date=enrolment_date,
        closing_date=row.get("DATA_CHIUSURA") if status == "X" else None,
        first_name=first,  # type: ignore[arg-type]
        last_name=last,  # type: ignore[arg-type]
        email=email,
        consent=_clean(row.get("CONSENSO_ESC")),
        source_esi=_clean(row.get("CODICE_ESI")),
    )
