"""The demo Esse3 as it is now, read whole: what ``mutate`` changes, and which careers are the
deliberately bad ones (found from the data alone, as ``generate`` made them)."""

from __future__ import annotations

import datetime as dt
import re
from collections import namedtuple
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Select, select

from etl.demo.esse3_db import open_engine
from etl.demo.generate import BAD_KINDS
from etl.demo.schema import P01_ANAPER, P01_BADGE, P01_STU, P06_CDS

# What the generator's addresses look like; anything else is a malformed_email.
VALID_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


@dataclass
class Snapshot:
    careers: list[Any]  # rows in STU_ID order
    persons: dict[int, Any]
    course_types: dict[int, str]
    badges: list[Any]  # rows in BDG_ID order


def detect_bad(url: str, now: dt.datetime) -> dict[str, list[int]]:
    """The bad careers as ``generate`` reports them (kind -> STU_IDs), found from the data alone."""
    engine = open_engine(url)
    try:
        with engine.connect() as conn:
            return classify(load(conn), now.date())
    finally:
        engine.dispose()


def load(conn: Connection) -> Snapshot:
    s, p, b = P01_STU.c, P01_ANAPER.c, P01_BADGE.c
    careers = _rows(
        conn,
        "Career",
        select(
            s.STU_ID,
            s.PERS_ID,
            s.MATRICOLA,
            s.CDS_ID,
            s.AA_ID,
            s.DATA_IMM,
            s.STA_STU_COD,
            s.MOT_STASTU_COD,
            s.DATA_MOD,
        ).order_by(s.STU_ID),
    )
    persons = _rows(
        conn, "Person", select(p.PERS_ID, p.NOME, p.COGNOME, p.DATA_NASCITA, p.EMAIL_ATE).order_by(p.PERS_ID)
    )
    courses = dict(conn.execute(select(P06_CDS.c.CDS_ID, P06_CDS.c.TIPO_CORSO_COD)).tuples().all())
    badges = _rows(conn, "Badge", select(b.BDG_ID, b.STU_ID, b.DATA_FIN, b.ANN_FLG).order_by(b.BDG_ID))
    return Snapshot(careers, {r.PERS_ID: r for r in persons}, courses, badges)


def _rows(conn: Connection, name: str, query: Select[Any]) -> list[Any]:
    """Named tuples: attribute access on SQLAlchemy rows costs seconds over 100k careers."""
    result = conn.execute(query)
    row_type = namedtuple(name, list(result.keys()))  # type: ignore[misc]  # fields: the query's columns
    make = row_type._make
    return [make(r) for r in result.tuples()]


def blank(value: str | None) -> bool:
    return not (value or "").strip()


def classify(snap: Snapshot, today: dt.date) -> dict[str, list[int]]:
    bad: dict[str, list[int]] = {k: [] for k in BAD_KINDS}
    seen_matricole: set[str] = set()
    nameless = {pid for pid, p in snap.persons.items() if blank(p.NOME) or blank(p.COGNOME)}
    bad_email = {pid for pid, p in snap.persons.items() if not VALID_EMAIL.match(p.EMAIL_ATE or "")}
    for c in snap.careers:
        if c.PERS_ID in nameless or c.PERS_ID not in snap.persons:
            bad["missing_name"].append(c.STU_ID)
        if c.PERS_ID in bad_email:
            bad["malformed_email"].append(c.STU_ID)
        # A valid DATA_IMM is never after the row's last modification.
        imm = c.DATA_IMM
        if imm is not None and (imm > today or imm > c.DATA_MOD.date()):
            bad["future_enrolment"].append(c.STU_ID)
        if c.MATRICOLA is not None:
            if c.MATRICOLA in seen_matricole:
                bad["duplicate_matricola"].append(c.STU_ID)  # the later career; the first one is fine
            seen_matricole.add(c.MATRICOLA)
        if c.CDS_ID not in snap.course_types:
            bad["unknown_course"].append(c.STU_ID)
    return bad
