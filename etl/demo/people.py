"""Synthetic people for the demo Esse3 (names, codice fiscale, e-mails) and the random draws the
generator and the mutator share. Deterministic: everything comes from the caller's ``random.Random``."""

from __future__ import annotations

import datetime as dt
import random
import string
import unicodedata
from bisect import bisect
from collections.abc import Iterable, Sequence
from functools import lru_cache
from itertools import accumulate
from typing import Any

from etl.demo import names
from etl.demo.esse3_db import Row

# Normal length in years per course type; CS (single courses) last one year.
DURATION: dict[str, int] = {"L2": 3, "LM": 2, "LM5": 5, "D": 3, "CS": 1}
TYPE_WEIGHTS: dict[str, int] = {"L2": 52, "LM": 25, "LM5": 14, "D": 5, "CS": 4}
_FOREIGN_SHARE = 0.03

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
