"""Generate the synthetic Esse3 database (persons, courses, careers, badges) behind the embedded default.

Deterministic: everything derives from ``random.Random(seed)`` and the caller's ``now`` (never the wall
clock), so tests, benchmarks and demos see the same data for the same arguments. About 1% of the
careers are deliberately bad (see ``BAD_KINDS``) so quarantine paths get exercised.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass, field
from itertools import accumulate

from sqlalchemy import inspect, select
from sqlalchemy.exc import SQLAlchemyError

from etl.demo import names
from etl.demo.esse3_db import Row, insert_rows, missing_sqlite_file, open_engine, redacted
from etl.demo.people import DURATION, TYPE_WEIGHTS, badge_end, below, make_person, pick, weighted
from etl.demo.schema import P01_ANAPER, P01_BADGE, P01_STU, P06_CDS, metadata
from etl.errors import EscSyncError

BAD_KINDS: tuple[str, ...] = (
    "missing_name",
    "malformed_email",
    "future_enrolment",
    "duplicate_matricola",
    "unknown_course",
)
_MIDNIGHT = dt.time()
FINALISED = frozenset({"A", "S", "X"})
_TWO_CAREER_SHARE = 0.15
_BADGE_SHARE = 0.90
_PHYSICAL_SHARE = 0.30
_ANNUL_SHARE = 0.03


@dataclass
class GenerateStats:
    persons: int
    careers: int
    courses: int
    badges: int
    bad: dict[str, list[int]] = field(default_factory=dict)  # kind -> STU_IDs


def is_generated(url: str) -> bool:
    """True when the demo tables exist and P01_STU holds at least one career."""
    if missing_sqlite_file(url):
        return False  # connecting would create an empty file
    engine = open_engine(url)
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table(P01_STU.name):
                return False
            return conn.execute(select(P01_STU.c.STU_ID).limit(1)).first() is not None
    except SQLAlchemyError as exc:
        raise EscSyncError(
            f"cannot read the demo Esse3 database {redacted(url)}: {getattr(exc, 'orig', None) or exc}"
        ) from exc
    finally:
        engine.dispose()


def generate(
    url: str,
    *,
    seed: int,
    students: int = 2500,
    first_year: int = 2019,
    last_year: int = 2025,
    now: dt.datetime,
    matricola_base: int = 100000,
    email_domain: str = "studenti.example.it",
) -> GenerateStats:
    """Create the Esse3 tables at ``url`` and fill them with about ``students`` careers."""
    if now.tzinfo is not None:
        raise ValueError("now must be a naive datetime (Esse3 stores local time)")
    if first_year > last_year:
        raise EscSyncError(f"demo years: first_year {first_year} is after last_year {last_year}")
    if now <= dt.datetime(first_year, 8, 2):
        raise EscSyncError(f"demo years: now ({now:%Y-%m-%d}) is before academic year {first_year} starts")
    if students < 0:
        raise EscSyncError("demo students must be >= 0")
    engine = open_engine(url)
    try:
        with engine.begin() as conn:
            metadata.create_all(conn)
            if conn.execute(select(P01_STU.c.STU_ID).limit(1)).first() is not None:
                raise EscSyncError(
                    f"the demo Esse3 database {redacted(url)} already holds careers (P01_STU); "
                    "refusing to generate again"
                )
            data = _Builder(random.Random(seed), now, email_domain).build(
                students, first_year, last_year, matricola_base
            )
            for table, rows in (
                (P06_CDS, data.courses),
                (P01_ANAPER, data.persons),
                (P01_STU, data.careers),
                (P01_BADGE, data.badges),
            ):
                insert_rows(conn, table, rows)
    except SQLAlchemyError as exc:
        msg = f"cannot write the demo Esse3 database {redacted(url)}: {getattr(exc, 'orig', None) or exc}"
        raise EscSyncError(msg) from exc
    finally:
        engine.dispose()
    return GenerateStats(
        persons=len(data.persons),
        careers=len(data.careers),
        courses=len(data.courses),
        badges=len(data.badges),
        bad=data.bad,
    )


# --- the builder --------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Career:
    person: int  # index into _Builder.persons
    cds_id: int
    course_type: str
    aa_id: int
    status: str = "A"
    data_imm: dt.date | None = None
    start: dt.date = dt.date.min  # enrolment or provisional-application day: orders STU_IDs
    reason: str | None = None
    closed: dt.date | None = None
    data_mod: dt.datetime = dt.datetime.min
    stu_id: int = 0
    matricola: str = ""


@dataclass
class _Data:
    courses: list[Row]
    persons: list[Row]
    careers: list[Row]
    badges: list[Row]
    bad: dict[str, list[int]]


class _Builder:
    def __init__(self, rng: random.Random, now: dt.datetime, email_domain: str) -> None:
        self.rng = rng
        self.now = now.replace(microsecond=0)
        self.last_day = now.date() - dt.timedelta(days=1)  # latest day a past event may carry
        self.email_domain = email_domain
        self.aliases: set[str] = set()
        self.persons: list[Row] = []
        self.person_start: list[dt.date] = []  # latest career start per person: its DATA_MOD base
        self.person_careers: list[int] = []

    # -- time helpers
    def day(self, lo: dt.date, hi: dt.date) -> dt.date | None:
        """A random day in [lo, min(hi, last_day)], None when empty."""
        hi = min(hi, self.last_day)
        if lo > hi:
            return None
        return lo + dt.timedelta(days=below(self.rng, (hi - lo).days + 1))

    def stamp(self, day: dt.date, max_lag_days: int = 20) -> dt.datetime:
        """Office-hours timestamp on ``day`` or a few days later, always strictly before now."""
        rnd = self.rng.random
        lag = int(rnd() * (max_lag_days + 1)) * 86400 + 8 * 3600 + int(rnd() * 11 * 3600)
        t = dt.datetime.combine(day, _MIDNIGHT) + dt.timedelta(seconds=lag)
        if t >= self.now:
            t = self.now - dt.timedelta(seconds=1 + int(rnd() * 6 * 3600))
        return t

    # -- main
    def build(self, students: int, first_year: int, last_year: int, matricola_base: int) -> _Data:
        rng = self.rng
        courses = self.courses(first_year)
        by_type: dict[str, list[int]] = {}
        for course in courses:
            by_type.setdefault(course["TIPO_CORSO_COD"], []).append(course["CDS_ID"])
        years = list(range(first_year, last_year + 1))
        year_cum = list(accumulate(1 + 0.08 * i for i in range(len(years))))  # more in recent years
        bachelor_years = years[:-3]
        bachelor_cum = year_cum[: len(bachelor_years)]
        types = list(TYPE_WEIGHTS)
        type_cum = list(accumulate(TYPE_WEIGHTS.values()))

        careers: list[_Career] = []
        while len(careers) < students:
            two = bool(bachelor_years) and students - len(careers) >= 2 and rng.random() < _TWO_CAREER_SHARE
            if two:
                aa = weighted(rng, bachelor_years, bachelor_cum)
                p = self.person(aa - 19 - pick(rng, (0, 0, 0, 1, 1, 2)))
                bachelor = self.career(p, pick(rng, by_type["L2"]), "L2", aa, last_year, graduate=True)
                careers.append(bachelor)
                not_before = (bachelor.closed or bachelor.start) + dt.timedelta(days=1)
                careers.append(self.career(p, pick(rng, by_type["LM"]), "LM", aa + 3, last_year, not_before))
            else:
                aa = weighted(rng, years, year_cum)
                tipo = weighted(rng, types, type_cum)
                age = {"LM": 22, "D": 26}.get(tipo, 19) + pick(rng, (0, 0, 0, 1, 1, 2, 3, 6))
                p = self.person(aa - age)
                careers.append(self.career(p, pick(rng, by_type[tipo]), tipo, aa, last_year))

        # IDs follow time, as in a real Esse3: STU_ID/MATRICOLA by start, PERS_ID by first career.
        careers.sort(key=lambda c: (c.aa_id, c.start))
        pers_ids = [0] * len(self.persons)
        next_pers = 1
        for i, c in enumerate(careers):
            c.stu_id, c.matricola = i + 1, str(matricola_base + i)
            if not pers_ids[c.person]:
                pers_ids[c.person], next_pers = next_pers, next_pers + 1

        bad = self.corrupt(careers, len(courses), students)
        bad_ids = {s for ids in bad.values() for s in ids}
        badges = self.badges([c for c in careers if c.stu_id not in bad_ids], pers_ids)

        persons = []
        for i, person in enumerate(self.persons):
            person["PERS_ID"] = pers_ids[i]
            person["DATA_MOD"] = self.stamp(self.person_start[i], 30)
            persons.append(person)
        persons.sort(key=lambda row: row["PERS_ID"])
        career_rows = [
            {
                "STU_ID": c.stu_id,
                "PERS_ID": pers_ids[c.person],
                "MATRICOLA": c.matricola,
                "CDS_ID": c.cds_id,
                "AA_ID": c.aa_id,
                "DATA_IMM": c.data_imm,
                "STA_STU_COD": c.status,
                "MOT_STASTU_COD": c.reason,
                "DATA_CHIUSURA": c.closed,
                "CODICE_ESI": None,
                "DATA_MOD": c.data_mod,
            }
            for c in careers
        ]
        return _Data(courses, persons, career_rows, badges, bad)

    def courses(self, first_year: int) -> list[Row]:
        base = dt.date(first_year - 1, 1, 10)
        return [
            {
                "CDS_ID": i,
                "COD": f"{tipo}-{code}",
                "DES": des,
                "TIPO_CORSO_COD": tipo,
                "DATA_MOD": self.stamp(base + dt.timedelta(days=below(self.rng, 300))),
            }
            for i, (tipo, code, des) in enumerate(names.COURSES, start=1)
        ]

    def person(self, birth_year: int) -> int:
        self.persons.append(make_person(self.rng, birth_year, self.email_domain, self.aliases))
        self.person_start.append(dt.date.min)
        self.person_careers.append(0)
        return len(self.persons) - 1

    def career(
        self,
        person: int,
        cds_id: int,
        tipo: str,
        aa: int,
        last_year: int,
        not_before: dt.date | None = None,
        *,
        graduate: bool = False,
    ) -> _Career:
        rng = self.rng
        c = _Career(person, cds_id, tipo, aa)
        self.person_careers[person] += 1
        imm_lo = max(dt.date(aa, 8, 1), not_before or dt.date.min)
        imm = self.day(imm_lo, dt.date(aa, 12, 31))
        provisional = rng.random() < (0.25 if aa == last_year else 0.01)
        if imm is None or (provisional and not graduate):
            # 'I': applied for enrolment, first instalment not paid yet.
            c.status = "I"
            c.start = self.day(dt.date(aa, 7, 15), dt.date(aa, 10, 31)) or min(imm_lo, self.last_day)
            event = c.start
        else:
            c.data_imm = c.start = event = imm
            self.close(c, graduate)
            if c.closed:
                event = c.closed
            elif rng.random() < 0.03:
                c.status = "S"
        c.data_mod = self.stamp(event, 30)
        self.person_start[person] = max(self.person_start[person], c.start)
        return c

    def close(self, c: _Career, graduate: bool) -> None:
        rng = self.rng
        assert c.data_imm is not None
        duration = DURATION[c.course_type]
        after_imm = c.data_imm + dt.timedelta(days=1)
        if graduate:
            # Graduates in time, before enrolling in the master three years on.
            reason = "TIT"
            day = self.day(max(after_imm, dt.date(c.aa_id + 3, 3, 1)), dt.date(c.aa_id + 3, 7, 31))
        else:
            years_done = (self.last_day - c.data_imm).days / 365.25
            if years_done >= duration:
                if rng.random() >= 0.55:
                    return
                reason = weighted(rng, ("TIT", "RIN", "DEC"), (75, 90, 100))
            else:
                if rng.random() >= 0.04 + 0.03 * years_done:
                    return
                reason = weighted(rng, ("RIN", "DEC"), (70, 100))
            if reason == "TIT":
                grad_year = c.aa_id + duration + pick(rng, (0, 0, 0, 1, 1, 2))
                day = self.day(max(after_imm, dt.date(grad_year, 3, 1)), dt.date(grad_year + 1, 4, 30))
                day = day or self.day(max(after_imm, dt.date(c.aa_id + duration, 3, 1)), self.last_day)
            else:
                day = self.day(c.data_imm + dt.timedelta(days=60 if reason == "RIN" else 365), self.last_day)
        if day is not None:
            c.status, c.reason, c.closed = "X", reason, day

    def corrupt(self, careers: list[_Career], n_courses: int, students: int) -> dict[str, list[int]]:
        """Spoil about 1% of the careers, all otherwise eligible (active, single career per person)."""
        rng = self.rng
        bad: dict[str, list[int]] = {k: [] for k in BAD_KINDS}
        per_kind = max(1, round(students * 0.002)) if students >= 20 else 0
        pool = [
            c
            for c in careers
            if c.status == "A"
            and c.data_imm is not None
            and c.stu_id > 1
            and self.person_careers[c.person] == 1
        ]
        chosen = rng.sample(pool, min(len(pool), per_kind * len(BAD_KINDS)))
        chosen.sort(key=lambda c: c.stu_id)
        bad_ids = {c.stu_id for c in chosen}
        for i, c in enumerate(chosen):
            kind = BAD_KINDS[i % len(BAD_KINDS)]
            bad[kind].append(c.stu_id)
            person = self.persons[c.person]
            if kind == "missing_name":
                field_name = ("NOME", "COGNOME")[i % 2]
                person[field_name] = (None, "", "  ")[(i // 2) % 3]
            elif kind == "malformed_email":
                local, domain = person["EMAIL_ATE"].split("@")
                person["EMAIL_ATE"] = f"{local}@@{domain}" if i % 2 else local
            elif kind == "future_enrolment":
                # DATA_MOD keeps its past value: the row was keyed in with a wrong date.
                c.data_imm = self.now.date() + dt.timedelta(days=rng.randint(30, 400))
            elif kind == "duplicate_matricola":
                for _ in range(50):  # a good twin with a lower STU_ID (careers are in STU_ID order)
                    twin = careers[below(rng, c.stu_id - 1)]
                    if twin.stu_id not in bad_ids:
                        break
                c.matricola = twin.matricola
            else:
                c.cds_id = n_courses + 100 + len(bad[kind])
        return bad

    def badges(self, careers: list[_Career], pers_ids: list[int]) -> list[Row]:
        rng = self.rng
        rows: list[Row] = []

        def add(c: _Career, ini: dt.date, fin: dt.date, annulled_on: dt.date | None = None) -> None:
            physical = rng.random() < _PHYSICAL_SHARE
            printed = None
            if physical:
                printed = self.day(ini + dt.timedelta(days=3), ini + dt.timedelta(days=45)) or ini
            rows.append(
                {
                    "STU_ID": c.stu_id,
                    "PERS_ID": pers_ids[c.person],
                    "DATA_INI": ini,
                    "DATA_FIN": fin,
                    "ANN_FLG": 1 if annulled_on else 0,
                    "DATA_STAMPA": printed,
                    "TIPO": "F" if physical else "V",
                    "DATA_MOD": self.stamp(annulled_on or printed or ini, 10),
                }
            )

        for c in careers:
            if c.status not in FINALISED or c.data_imm is None or rng.random() >= _BADGE_SHARE:
                continue
            fin = badge_end(c.aa_id, c.course_type)
            lost = self.day(c.data_imm + dt.timedelta(days=60), fin) if rng.random() < _ANNUL_SHARE else None
            add(c, c.data_imm, fin, lost)
            if lost is not None:
                add(c, lost, fin)  # the replacement
        rows.sort(key=lambda r: (r["DATA_INI"], r["STU_ID"], -r["ANN_FLG"]))
        for i, r in enumerate(rows, start=1):
            r["BDG_ID"] = i
        return rows
