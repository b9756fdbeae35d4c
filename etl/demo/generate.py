"""Generate the synthetic Esse3 database (persons, courses, careers, badges) behind the embedded default.

Deterministic: everything derives from ``random.Random(seed)`` and the caller's ``now`` (never the wall
clock), so tests, benchmarks and demos see the same data for the same arguments. About 1% of the
careers are deliberately bad (see ``BAD_KINDS``) so quarantine paths get exercised.
"""

from __future__ import annotations

import datetime as dt
import random
import string
import unicodedata
from bisect import bisect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import accumulate
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, Table, create_engine, event, inspect, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from etl.demo import names
from etl.demo.schema import P01_ANAPER, P01_BADGE, P01_STU, P06_CDS, metadata
from etl.errors import EscSyncError

BAD_KINDS: tuple[str, ...] = (
    "missing_name",
    "malformed_email",
    "future_enrolment",
    "duplicate_matricola",
    "unknown_course",
)
# Normal length in years per course type; CS (single courses) last one year.
DURATION: dict[str, int] = {"L2": 3, "LM": 2, "LM5": 5, "D": 3, "CS": 1}
TYPE_WEIGHTS: dict[str, int] = {"L2": 52, "LM": 25, "LM5": 14, "D": 5, "CS": 4}
_MIDNIGHT = dt.time()
FINALISED = frozenset({"A", "S", "X"})
_BATCH = 5000
_TWO_CAREER_SHARE = 0.15
_FOREIGN_SHARE = 0.03
_BADGE_SHARE = 0.90
_PHYSICAL_SHARE = 0.30
_ANNUL_SHARE = 0.03

Row = dict[str, Any]


@dataclass
class GenerateStats:
    persons: int
    careers: int
    courses: int
    badges: int
    bad: dict[str, list[int]] = field(default_factory=dict)  # kind -> STU_IDs


def open_engine(url: str) -> Engine:
    """Engine for the demo database; on SQLite, WAL so readers are not blocked by the sync writers."""
    engine = create_engine(url)
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

    return engine


def missing_sqlite_file(url: str) -> bool:
    u = make_url(url)
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        return False
    return not Path(u.database).exists()


def redacted(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


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


def insert_rows(conn: Connection, table: Table, rows: Sequence[Row]) -> None:
    """executemany in batches. All rows must have the same keys."""
    if not rows:
        return
    if conn.dialect.driver == "psycopg":
        # COPY is several times faster than executemany on PostgreSQL; psycopg adapts the values.
        keys = list(rows[0])
        prep = conn.dialect.identifier_preparer
        cols = ", ".join(prep.quote(k) for k in keys)
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        with cursor, cursor.copy(f"COPY {prep.format_table(table)} ({cols}) FROM STDIN") as copy:
            for r in rows:
                copy.write_row([r[k] for k in keys])
        return
    if conn.dialect.name != "sqlite":
        for i in range(0, len(rows), _BATCH):
            conn.execute(table.insert(), list(rows[i : i + _BATCH]))
        return
    # On SQLite, SQLAlchemy's per-row parameter handling costs more than SQLite itself (~2/3 of 100k
    # careers' time). Convert with the columns' own bind processors, so values are stored exactly as
    # SQLAlchemy stores them (dates are strings in SQLite), and hand tuples to the driver.
    keys = list(rows[0])
    procs = [_sqlite_processor(table.c[k].type, conn.dialect) for k in keys]
    prep = conn.dialect.identifier_preparer
    sql = (
        f"INSERT INTO {prep.format_table(table)} ({', '.join(prep.quote(k) for k in keys)}) "
        f"VALUES ({', '.join('?' * len(keys))})"
    )
    plan = list(zip(keys, procs, strict=True))
    for i in range(0, len(rows), _BATCH):
        params = [tuple([r[k] if p is None else p(r[k]) for k, p in plan]) for r in rows[i : i + _BATCH]]
        conn.exec_driver_sql(sql, params)


def _sqlite_processor(type_: Any, dialect: Any) -> Callable[[Any], Any] | None:
    """The column type's bind processor, or the C-speed isoformat when it gives the same text."""
    proc = type_.dialect_impl(dialect).bind_processor(dialect)
    if proc is None:
        return None
    try:
        python_type = type_.python_type
    except NotImplementedError:
        return proc
    if python_type not in _FAST_FORMATS:
        return proc
    fast, probes = _FAST_FORMATS[python_type]
    return fast if all(fast(v) == proc(v) for v in probes) else proc


def _iso_datetime(v: dt.datetime | None) -> str | None:
    return None if v is None else v.isoformat(" ", "microseconds")


def _iso_date(v: dt.date | None) -> str | None:
    return None if v is None else v.isoformat()


# Each fast formatter with the values that must format exactly as SQLAlchemy's own processor does.
_FAST_FORMATS: dict[type, tuple[Callable[[Any], Any], tuple[Any, ...]]] = {
    dt.datetime: (_iso_datetime, (dt.datetime(2001, 2, 3, 4, 5, 6, 7), dt.datetime(2001, 2, 3, 4, 5, 6))),
    dt.date: (_iso_date, (dt.date(2001, 2, 3),)),
}


# --- persons (shared with mutate) -------------------------------------------------------------------

_CF_MONTHS = "ABCDEHLMPRST"
_ODD_VALUES = (1, 0, 5, 7, 9, 13, 15, 17, 19, 21, 2, 4, 18, 20, 11, 3, 6, 8, 12, 14, 16, 10, 22, 25, 24, 23)
_CF_ODD = dict(zip(string.digits, _ODD_VALUES[:10], strict=True)) | dict(
    zip(string.ascii_uppercase, _ODD_VALUES, strict=True)
)
_CF_EVEN = {c: (int(c) if c.isdigit() else ord(c) - 65) for c in "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"}
_VOWELS = frozenset("AEIOU")


@lru_cache(maxsize=4096)
def ascii_letters(text: str) -> str:
    """'Nicolò D'Amico' -> 'NicoloDAmico': accents folded, everything but letters dropped."""
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return "".join(c for c in folded if c.isalpha())


def codice_fiscale(nome: str, cognome: str, birth: dt.date, female: bool, place: str) -> str:
    """A well-formed codice fiscale (right structure and check character) for synthetic data."""

    names_part = _cf_part(cognome, False) + _cf_part(nome, True)
    day = birth.day + (40 if female else 0)
    birth_part = f"{birth.year % 100:02d}{_CF_MONTHS[birth.month - 1]}{day:02d}"
    total = _cf_weight(names_part, 0) + _cf_weight(birth_part, 6) + _cf_weight(place, 11)
    return f"{names_part}{birth_part}{place}{chr(65 + total % 26)}"


@lru_cache(maxsize=65536)
def _cf_weight(segment: str, offset: int) -> int:
    """Check-character weight of a segment starting at ``offset`` (0-based: even index = odd position)."""
    return sum(_CF_ODD[c] if (offset + i) % 2 == 0 else _CF_EVEN[c] for i, c in enumerate(segment))


@lru_cache(maxsize=4096)
def _cf_part(name: str, first_name: bool) -> str:
    """Three letters from consonants then vowels; a first name with 4+ consonants skips the second."""
    up = ascii_letters(name).upper()
    cons = "".join(c for c in up if c not in _VOWELS)
    if first_name and len(cons) >= 4:
        return cons[0] + cons[2] + cons[3]
    return (cons + "".join(c for c in up if c in _VOWELS) + "XXX")[:3]


def email_alias(nome: str, cognome: str, taken: set[str]) -> str:
    """Institutional local part nome.cognome, then nome.cognome2, 3, ... for namesakes."""
    base = f"{ascii_letters(nome).lower()}.{ascii_letters(cognome).lower()}"
    alias, n = base, 1
    while alias in taken:
        n += 1
        alias = f"{base}{n}"
    taken.add(alias)
    return alias


def personal_email(rng: random.Random, nome: str, cognome: str, birth: dt.date) -> str:
    n, c = ascii_letters(nome).lower(), ascii_letters(cognome).lower()
    style = below(rng, 4)
    if style == 0:
        local = f"{n}.{c}{birth.year % 100:02d}"
    elif style == 1:
        local = f"{n}{c}{1 + below(rng, 999)}"
    elif style == 2:
        local = f"{c}.{n}{1 + below(rng, 99)}"
    else:
        local = f"{n[:1]}{c}{birth.day:02d}{birth.month:02d}"
    return f"{local}@{pick(rng, names.PERSONAL_EMAIL_DOMAINS)}"


def make_person(rng: random.Random, birth_year: int, email_domain: str, taken_aliases: set[str]) -> Row:
    """A P01_ANAPER row without PERS_ID and DATA_MOD."""
    birth = dt.date(birth_year, 1, 1) + dt.timedelta(days=below(rng, 365))
    if rng.random() < _FOREIGN_SHARE:
        nome, cognome = pick(rng, names.FOREIGN_FIRST_NAMES), pick(rng, names.FOREIGN_SURNAMES)
        cod_fis = None
    else:
        female = rng.random() < 0.55
        nome = pick(rng, names.FEMALE_NAMES if female else names.MALE_NAMES)
        cognome = pick(rng, names.SURNAMES)
        cod_fis = codice_fiscale(nome, cognome, birth, female, pick(rng, names.BIRTHPLACES))
    r = rng.random()
    return {
        "COGNOME": cognome,
        "NOME": nome,
        "COD_FIS": cod_fis,
        "DATA_NASCITA": birth,
        "EMAIL": personal_email(rng, nome, cognome, birth),
        "EMAIL_ATE": f"{email_alias(nome, cognome, taken_aliases)}@{email_domain}",
        "CONSENSO_ESC": "S" if r < 0.8 else "N" if r < 0.9 else None,
    }


def pick(rng: random.Random, seq: Sequence[Any]) -> Any:
    """rng.choice without its per-call overhead (millions of calls for a large ateneo)."""
    return seq[int(rng.random() * len(seq))]


def below(rng: random.Random, n: int) -> int:
    """Like rng.randrange(n), faster."""
    return int(rng.random() * n)


def badge_end(aa_id: int, course_type: str | None) -> dt.date:
    """31 October of the year after the course normally ends."""
    return dt.date(aa_id + DURATION.get(course_type or "", 3) + 1, 10, 31)


def pick_type(rng: random.Random, types: Iterable[str]) -> str:
    present = [t for t in TYPE_WEIGHTS if t in set(types)]
    return weighted(rng, present, list(accumulate(TYPE_WEIGHTS[t] for t in present)))


def weighted(rng: random.Random, items: Sequence[Any], cum_weights: Sequence[float]) -> Any:
    """rng.choices(items, cum_weights=...)[0] without its per-call overhead."""
    return items[bisect(cum_weights, rng.random() * cum_weights[-1])]


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
