"""Simulate a batch of Esse3 activity on a demo database: the changes incremental sync must pick up.

Every row written gets ``DATA_MOD = now`` and nothing else is touched, so the changed partitions are
exactly ``MutationStats.touched_years``. Deliberately bad careers (and their persons, and the good twin
of a duplicated matricola) are left alone, except one missing-name person per batch which gets fixed,
so "fix the source row and re-run" can be demonstrated.
"""

from __future__ import annotations

import datetime as dt
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Table, Update, bindparam, func, inspect, select, update
from sqlalchemy.exc import SQLAlchemyError

from etl.demo import names
from etl.demo.esse3_db import Row, insert_rows, missing_sqlite_file, open_engine, redacted
from etl.demo.people import (
    DURATION,
    badge_end,
    below,
    email_alias,
    make_person,
    personal_email,
    pick,
    pick_type,
)
from etl.demo.schema import P01_ANAPER, P01_BADGE, P01_STU
from etl.demo.snapshot import VALID_EMAIL, blank, classify, load
from etl.errors import EscSyncError

# Share of a batch per kind of activity; the rest of ``size`` are new provisional enrolments.
_MIX = {
    "finalisations": 0.20,
    "closures": 0.10,
    "reactivations": 0.05,
    "new_badges": 0.15,
    "annulled_badges": 0.05,
    "email_changes": 0.15,
}


@dataclass
class MutationStats:
    new_enrolments: int = 0  # new persons, each with a provisional ('I') career
    finalisations: int = 0  # 'I' -> 'A'
    closures: int = 0  # 'A' -> 'X' (TIT or RIN)
    reactivations: int = 0  # 'X' -> 'A'
    renewed_badges: int = 0  # badges of reactivated careers extended to the end of the year
    new_badges: int = 0
    annulled_badges: int = 0  # each with a replacement badge
    replacements: list[tuple[int, int]] = field(default_factory=list)  # (annulled, new) BDG_IDs
    email_changes: int = 0  # persons with new EMAIL and EMAIL_ATE
    fixed: int = 0  # missing_name persons given a name
    fixed_stu_ids: list[int] = field(default_factory=list)
    touched_years: set[int] = field(default_factory=set)


def mutate(url: str, *, seed: int, now: dt.datetime, size: int = 50) -> MutationStats:
    if now.tzinfo is not None:
        raise ValueError("now must be a naive datetime (Esse3 stores local time)")
    if missing_sqlite_file(url):
        raise EscSyncError(f"no demo Esse3 database at {redacted(url)}: generate it first")
    engine = open_engine(url)
    try:
        with engine.begin() as conn:
            if not inspect(conn).has_table(P01_STU.name):
                raise EscSyncError(f"no demo Esse3 tables in {redacted(url)}: generate them first")
            latest = max(
                (conn.scalar(select(func.max(t.c.DATA_MOD))) for t in (P01_ANAPER, P01_STU, P01_BADGE)),
                key=lambda v: v or dt.datetime.min,
            )
            if latest is None:
                raise EscSyncError(f"the demo Esse3 database {redacted(url)} is empty: generate it first")
            if now <= latest:
                raise EscSyncError(
                    f"mutate needs a now later than the latest DATA_MOD ({latest:%Y-%m-%d %H:%M:%S}), "
                    f"got {now:%Y-%m-%d %H:%M:%S}"
                )
            return _Batch(conn, random.Random(f"{seed}|{now.isoformat()}|{size}"), now).run(size)
    except SQLAlchemyError as exc:
        msg = f"cannot update the demo Esse3 database {redacted(url)}: {getattr(exc, 'orig', None) or exc}"
        raise EscSyncError(msg) from exc
    finally:
        engine.dispose()


class _Batch:
    def __init__(self, conn: Connection, rng: random.Random, now: dt.datetime) -> None:
        self.conn, self.rng, self.now, self.today = conn, rng, now, now.date()
        self.snap = load(conn)
        self.stats = MutationStats()
        self.bad = classify(self.snap, self.today)
        self.careers_of: dict[int, list[Any]] = defaultdict(list)
        for c in self.snap.careers:
            self.careers_of[c.PERS_ID].append(c)
        self.career = {c.STU_ID: c for c in self.snap.careers}
        # Leave alone: bad careers, the first holder of a duplicated matricola, and their persons' careers.
        by_matricola = Counter(c.MATRICOLA for c in self.snap.careers if c.MATRICOLA is not None)
        tainted = {s for ids in self.bad.values() for s in ids}
        tainted |= {c.STU_ID for c in self.snap.careers if by_matricola[c.MATRICOLA] > 1}
        self.tainted_persons = {self.career[s].PERS_ID for s in tainted}
        # Careers not to touch (any more): grows as the batch touches careers.
        self.busy = {c.STU_ID for p in self.tainted_persons for c in self.careers_of[p]}
        self.busy_persons = set(self.tainted_persons)
        self.career_updates: list[Row] = []
        self.person_updates: list[Row] = []
        self.new_persons: list[Row] = []
        self.new_careers: list[Row] = []
        self.new_badges: list[Row] = []
        self.annulled: list[Row] = []
        self.renewed: list[Row] = []  # badges whose validity a reactivation extends
        self.taken_aliases = {e.split("@", 1)[0] for e in self._emails()}  # institutional local parts

    def run(self, size: int) -> MutationStats:
        counts = {k: round(size * share) for k, share in _MIX.items()}
        self.fix_one_name()
        self.enrol(max(0, size - sum(counts.values())))
        self.finalise(counts["finalisations"])
        self.close(counts["closures"])
        self.reactivate(counts["reactivations"])
        self.issue_badges(counts["new_badges"])
        self.annul_badges(counts["annulled_badges"])
        self.change_emails(counts["email_changes"])
        self.write()
        return self.stats

    # -- selection helpers
    def sample(self, candidates: list[Any], k: int) -> list[Any]:
        """Deterministic: candidates come in key order."""
        return self.rng.sample(candidates, min(k, len(candidates))) if k > 0 else []

    def free_careers(self, statuses: str) -> list[Any]:
        return [c for c in self.snap.careers if c.STA_STU_COD in statuses and c.STU_ID not in self.busy]

    def touch_career(self, c: Any) -> None:
        self.busy.add(c.STU_ID)
        self.stats.touched_years.add(c.AA_ID)

    def touch_person(self, pers_id: int) -> None:
        self.busy_persons.add(pers_id)
        self.stats.touched_years.update(c.AA_ID for c in self.careers_of[pers_id])

    def update_career(
        self, c: Any, status: str, imm: dt.date | None, reason: str | None, closed: dt.date | None
    ) -> None:
        self.touch_career(c)
        self.career_updates.append(
            {"k": c.STU_ID, "sta": status, "imm": imm, "mot": reason, "chius": closed, "mod": self.now}
        )

    def badge_row(self, bdg_id: int, c: Any, fin: dt.date) -> Row:
        physical = self.rng.random() < 0.3
        return {
            "BDG_ID": bdg_id,
            "STU_ID": c.STU_ID,
            "PERS_ID": c.PERS_ID,
            "DATA_INI": self.today,
            # Never already expired: a long career's normal end may be past.
            "DATA_FIN": fin if fin >= self.today else dt.date(self.today.year + 1, 10, 31),
            "ANN_FLG": 0,
            "DATA_STAMPA": self.today if physical else None,
            "TIPO": "F" if physical else "V",
            "DATA_MOD": self.now,
        }

    # -- the kinds of activity
    def fix_one_name(self) -> None:
        missing = {self.career[s].PERS_ID for s in self.bad["missing_name"]}
        persons = sorted(missing & self.snap.persons.keys())
        if not persons:
            return
        person = self.snap.persons[pick(self.rng, persons)]
        female = self.rng.random() < 0.55
        nome = pick(self.rng, names.FEMALE_NAMES if female else names.MALE_NAMES)
        self.person_updates.append(
            {
                "k": person.PERS_ID,
                "nome": nome if blank(person.NOME) else person.NOME,
                "cognome": pick(self.rng, names.SURNAMES) if blank(person.COGNOME) else person.COGNOME,
                "mod": self.now,
            }
        )
        self.touch_person(person.PERS_ID)
        self.stats.fixed = 1
        self.stats.fixed_stu_ids = [c.STU_ID for c in self.careers_of[person.PERS_ID]]

    def enrol(self, n: int) -> None:
        if n <= 0:
            return
        aa = max(c.AA_ID for c in self.snap.careers)
        domains = Counter(e.split("@", 1)[1] for e in self._emails() if VALID_EMAIL.match(e))
        domain = domains.most_common(1)[0][0] if domains else "studenti.example.it"
        by_type: dict[str, list[int]] = defaultdict(list)
        for cds_id, tipo in sorted(self.snap.course_types.items()):
            by_type[tipo].append(cds_id)
        matricole = [int(c.MATRICOLA) for c in self.snap.careers if (c.MATRICOLA or "").isdigit()]
        next_matricola = max(matricole, default=99999) + 1
        next_pers = max(self.snap.persons, default=0) + 1
        next_stu = self.snap.careers[-1].STU_ID + 1
        for i in range(n):
            tipo = pick_type(self.rng, by_type)
            birth_year = aa - {"LM": 22, "D": 26}.get(tipo, 19) - below(self.rng, 3)
            person = make_person(self.rng, birth_year, domain, self.taken_aliases)
            self.new_persons.append({"PERS_ID": next_pers + i, **person, "DATA_MOD": self.now})
            self.new_careers.append(
                {
                    "STU_ID": next_stu + i,
                    "PERS_ID": next_pers + i,
                    "MATRICOLA": str(next_matricola + i),
                    "CDS_ID": pick(self.rng, by_type[tipo]),
                    "AA_ID": aa,
                    "DATA_IMM": None,
                    "STA_STU_COD": "I",
                    "MOT_STASTU_COD": None,
                    "DATA_CHIUSURA": None,
                    "CODICE_ESI": None,
                    "DATA_MOD": self.now,
                }
            )
        self.stats.new_enrolments = n
        self.stats.touched_years.add(aa)

    def finalise(self, n: int) -> None:
        # Recent applications get paid; the odd stale one of an old year stays provisional.
        recent = max(c.AA_ID for c in self.snap.careers) - 1
        for c in self.sample([c for c in self.free_careers("I") if recent <= c.AA_ID], n):
            # The first instalment was paid a few days ago.
            self.update_career(c, "A", self.today - dt.timedelta(days=1 + below(self.rng, 5)), None, None)
            self.stats.finalisations += 1

    def close(self, n: int) -> None:
        today = self.today
        candidates = [c for c in self.free_careers("A") if c.DATA_IMM is not None and today > c.DATA_IMM]
        for c in self.sample(candidates, n):
            imm: dt.date = c.DATA_IMM
            due = (today - imm).days / 365.25 >= DURATION.get(self.snap.course_types[c.CDS_ID], 3) - 0.5
            reason = "TIT" if due and self.rng.random() < 0.8 else "RIN"
            closed = max(imm + dt.timedelta(days=1), today - dt.timedelta(days=below(self.rng, 7)))
            self.update_career(c, "X", imm, reason, closed)
            self.stats.closures += 1

    def reactivate(self, n: int) -> None:
        candidates = [c for c in self.free_careers("X") if c.MOT_STASTU_COD != "TIT"]
        for c in self.sample(candidates, n):
            self.update_career(c, "A", c.DATA_IMM, None, None)
            self.stats.reactivations += 1
            # As Esse3 does on a reactivation: the badge that ran out is renewed to the end of the
            # academic year (esc-sync never extends a badge's validity on its own).
            for b in self.snap.badges:
                if b.STU_ID == c.STU_ID and not b.ANN_FLG and b.DATA_FIN < self.today:
                    fin = dt.date(self.today.year + 1, 10, 31)
                    self.renewed.append({"k": b.BDG_ID, "fin": fin, "mod": self.now})
                    self.stats.renewed_badges += 1

    def next_badge_id(self) -> int:
        taken = [b.BDG_ID for b in self.snap.badges[-1:]] + [r["BDG_ID"] for r in self.new_badges[-1:]]
        return max(taken, default=0) + 1

    def issue_badges(self, n: int) -> None:
        with_badge = {b.STU_ID for b in self.snap.badges}
        candidates = [
            c for c in self.free_careers("AS") if c.DATA_IMM is not None and c.STU_ID not in with_badge
        ]
        for c in self.sample(candidates, n):
            fin = badge_end(c.AA_ID, self.snap.course_types.get(c.CDS_ID))
            self.new_badges.append(self.badge_row(self.next_badge_id(), c, fin))
            self.touch_career(c)
            self.stats.new_badges += 1

    def annul_badges(self, n: int) -> None:
        candidates, seen = [], set()
        for b in self.snap.badges:
            c = self.career.get(b.STU_ID)
            if (
                b.ANN_FLG == 0
                and self.today <= b.DATA_FIN  # a lost card still valid
                and c is not None
                and c.STA_STU_COD in ("A", "S")
                and c.STU_ID not in self.busy
                and c.STU_ID not in seen
            ):
                candidates.append(b)
                seen.add(c.STU_ID)
        for b in self.sample(candidates, n):
            c = self.career[b.STU_ID]
            self.annulled.append({"k": b.BDG_ID, "mod": self.now})
            replacement = self.next_badge_id()
            self.new_badges.append(self.badge_row(replacement, c, b.DATA_FIN))
            self.stats.replacements.append((b.BDG_ID, replacement))
            self.touch_career(c)
            self.stats.annulled_badges += 1

    def change_emails(self, n: int) -> None:
        candidates = [p for pid, p in self.snap.persons.items() if pid not in self.busy_persons]
        if not candidates:
            return
        for p in self.sample(candidates, n):
            domain = p.EMAIL_ATE.split("@", 1)[1]
            self.person_updates.append(
                {
                    "k": p.PERS_ID,
                    "nome": p.NOME,
                    "cognome": p.COGNOME,
                    "email": personal_email(self.rng, p.NOME, p.COGNOME, p.DATA_NASCITA),
                    "email_ate": f"{email_alias(p.NOME, p.COGNOME, self.taken_aliases)}@{domain}",
                    "mod": self.now,
                }
            )
            self.touch_person(p.PERS_ID)
            self.stats.email_changes += 1

    def _emails(self) -> list[str]:
        return [p.EMAIL_ATE for p in self.snap.persons.values() if p.EMAIL_ATE]

    # -- write everything in the caller's transaction
    def write(self) -> None:
        conn = self.conn
        insert_rows(conn, P01_ANAPER, self.new_persons)
        insert_rows(conn, P01_STU, self.new_careers)
        insert_rows(conn, P01_BADGE, self.new_badges)
        if self.career_updates:
            conn.execute(
                _by_key(P01_STU, "STU_ID").values(
                    STA_STU_COD=bindparam("sta"),
                    DATA_IMM=bindparam("imm"),
                    MOT_STASTU_COD=bindparam("mot"),
                    DATA_CHIUSURA=bindparam("chius"),
                    DATA_MOD=bindparam("mod"),
                ),
                self.career_updates,
            )
        names_only = [r for r in self.person_updates if "email" not in r]
        with_email = [r for r in self.person_updates if "email" in r]
        values: dict[str, Any] = {
            "NOME": bindparam("nome"),
            "COGNOME": bindparam("cognome"),
            "DATA_MOD": bindparam("mod"),
        }
        if names_only:
            conn.execute(_by_key(P01_ANAPER, "PERS_ID").values(**values), names_only)
        if with_email:
            conn.execute(
                _by_key(P01_ANAPER, "PERS_ID").values(
                    **values, EMAIL=bindparam("email"), EMAIL_ATE=bindparam("email_ate")
                ),
                with_email,
            )
        if self.annulled:
            conn.execute(
                _by_key(P01_BADGE, "BDG_ID").values(ANN_FLG=1, DATA_MOD=bindparam("mod")),
                self.annulled,
            )
        if self.renewed:
            conn.execute(
                _by_key(P01_BADGE, "BDG_ID").values(DATA_FIN=bindparam("fin"), DATA_MOD=bindparam("mod")),
                self.renewed,
            )


def _by_key(table: Table, key: str) -> Update:
    """UPDATE ... WHERE <key> = :k, for executemany."""
    column = table.c[key]
    return update(table).where(column == bindparam("k"))
