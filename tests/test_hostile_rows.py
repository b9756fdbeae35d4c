"""Hostile Esse3 rows (issue 11), end to end on SQLite and PostgreSQL state DBs against the emulator.

The demo Esse3 of one university gets its tables turned into key-less copies (as a careless view or a
migration leaves them: floats and text in key columns) and 40 kinds of bad rows, each a copy of a
good, finalised career with a badge. The whole chain then runs: every bad row is quarantined with its
precise reason and nothing of it reaches the Router or goes back to Esse3, the rest of the partition
is registered, no watermark moves past now, and a later change of a good row is still seen.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from etl.assets.badges import ingest_badges
from etl.assets.cards import sync_cards
from etl.assets.careers import ingest_careers
from etl.assets.esi import assign_esis
from etl.assets.router_calls import CallReport
from etl.changes import WATCHED_TABLES, changed_partitions
from etl.demo.generate import generate
from etl.domain.esi import compose_esi
from etl.domain.source_values import future_cutoff
from etl.emulator import EmulatorProcess
from etl.partitions import Partition
from etl.resources.runtime import Runtime
from etl.store.migrate import upgrade
from etl.store.models import Card, Career, Person, Quarantine, Watermark
from etl.store.watermarks import all_watermarks
from tests.fixtures.world import demo_settings

YEAR = 2025
NOW = dt.datetime.now().replace(microsecond=0) - dt.timedelta(days=2)
FUTURE = dt.datetime(2100, 1, 1, 12, 0)
BASE = 900_000  # keys of the hostile copies


@dataclass(frozen=True)
class Kind:
    name: str
    stage: str  # where it is quarantined: careers, esi or cards
    key: str  # its quarantine key
    reason: str  # a part of the reason
    stu: dict[str, Any]  # P01_STU overrides of the copy
    anaper: dict[str, Any]  # P01_ANAPER overrides of its person
    badge: dict[str, Any]  # P01_BADGE overrides of its badge


def kinds() -> list[Kind]:
    out: list[Kind] = []

    def add(
        name: str, stage: str, reason: str, *, key: Any = None, stu=None, anaper=None, badge=None
    ) -> None:  # type: ignore[no-untyped-def]
        n = BASE + len(out)
        stu = {"STU_ID": n, "PERS_ID": n, "MATRICOLA": f"H{n}"} | (stu or {})
        badge = {"BDG_ID": n, "STU_ID": stu["STU_ID"], "PERS_ID": stu["PERS_ID"]} | (badge or {})
        default_key = badge["BDG_ID"] if stage == "badges" else stu["STU_ID"]
        out.append(
            Kind(name, stage, str(default_key if key is None else key), reason, stu, anaper or {}, badge)
        )

    # keys
    add("stu_id float", "careers", "STU_ID is not an exact integer key", stu={"STU_ID": 3.7}, key="3.7")
    add("stu_id text", "careers", "STU_ID is not an integer key (str)", stu={"STU_ID": "S-1"}, key="S-1")
    add("stu_id 1e20", "careers", "STU_ID is not an exact integer key", stu={"STU_ID": 1e20}, key="1e+20")
    add("stu_id zero", "careers", "STU_ID is not a positive key", stu={"STU_ID": 0}, key="0")
    add("stu_id negative", "careers", "STU_ID is not a positive key", stu={"STU_ID": -5}, key="-5")
    add("stu_id too big", "careers", "STU_ID is out of range", stu={"STU_ID": 2**40}, key=str(2**40))
    add("pers_id float", "careers", "PERS_ID is not an exact integer key", stu={"PERS_ID": BASE + 6.5})
    add("pers_id text", "careers", "PERS_ID is not an integer key (str)", stu={"PERS_ID": "P7"})
    add("pers_id zero", "careers", "PERS_ID is not a positive key", stu={"PERS_ID": 0})
    add("pers_id negative", "careers", "PERS_ID is not a positive key", stu={"PERS_ID": -9})
    # dates
    add("career changed in 2100", "careers", "DATA_MOD in the future (P01_STU)", stu={"DATA_MOD": FUTURE})
    add(
        "person changed in 2100",
        "careers",
        "DATA_MOD in the future (P01_ANAPER)",
        anaper={"DATA_MOD": FUTURE},
    )
    add(
        "enrolled in the future",
        "careers",
        "enrolment dated in the future",
        stu={"DATA_IMM": dt.date(2100, 1, 1)},
    )
    # text
    add("NUL in name", "careers", "NOME contains a control", anaper={"NOME": "Ma\x00rio"})
    add("BEL in surname", "careers", "COGNOME contains a control", anaper={"COGNOME": "Ros\x07si"})
    add("C1 in name", "careers", "NOME contains a control", anaper={"NOME": "Ma\x85rio"})
    add("RLO in name", "careers", "NOME contains a bidirectional", anaper={"NOME": "Mario\u202eissoR"})
    add("LRO in surname", "careers", "COGNOME contains a bidirectional", anaper={"COGNOME": "\u202dRossi"})
    add(
        "isolate in surname", "careers", "COGNOME contains a bidirectional", anaper={"COGNOME": "Ro\u2066ssi"}
    )
    add("RLM in name", "careers", "NOME contains a bidirectional", anaper={"NOME": "Mario\u200f"})
    add(
        "private use in name",
        "careers",
        "NOME contains a control, private-use",
        anaper={"NOME": "Mar\ue000io"},
    )
    add("newline in e-mail", "careers", "EMAIL_ATE", anaper={"EMAIL_ATE": "m.ro\nssi@unife.it"})
    add(
        "bidi in e-mail",
        "careers",
        "EMAIL_ATE contains a bidirectional",
        anaper={"EMAIL_ATE": "a\u202d@unife.it"},
    )
    add("tab in matricola", "careers", "MATRICOLA contains a control", stu={"MATRICOLA": "H\t1"})
    add("missing name", "careers", "missing name", anaper={"NOME": None})
    add("malformed e-mail", "careers", "malformed e-mail", anaper={"EMAIL_ATE": "nobody-at-all"})
    add("long name", "careers", "NOME longer than 100", anaper={"NOME": "N" * 101})
    add("unknown status", "careers", "unknown status", stu={"STA_STU_COD": "Z"})
    add("closed without reason", "careers", "without a closing reason", stu={"STA_STU_COD": "X"})
    add(
        "unmapped closing reason",
        "careers",
        "unmapped closing reason",
        stu={"STA_STU_COD": "X", "MOT_STASTU_COD": "ZZZ"},
    )
    add("unknown course", "careers", "unknown course", stu={"CDS_ID": 987654})
    twin = BASE + len(out)  # two career rows with one STU_ID (a view joining a duplicated row)
    add("duplicate career key", "careers", "duplicate STU_ID", stu={"STU_ID": twin})
    add("duplicate career key (twin)", "careers", "duplicate STU_ID", stu={"STU_ID": twin}, key=str(twin))
    # ESI already on the career
    add("another ESI on the career", "esi", "different ESI", stu={"CODICE_ESI": compose_esi("other.it", 1)})
    # badges
    add("badge id float", "badges", "BDG_ID is not an exact integer key", badge={"BDG_ID": 5.5}, key="5.5")
    add("badge id text", "badges", "BDG_ID is not an integer key (str)", badge={"BDG_ID": "B-1"}, key="B-1")
    add("badge id zero", "badges", "BDG_ID is not a positive key", badge={"BDG_ID": 0}, key="0")
    add("badge changed in 2100", "badges", "DATA_MOD in the future (P01_BADGE)", badge={"DATA_MOD": FUTURE})
    add(
        "badge ends before it starts",
        "badges",
        "ends before it starts",
        badge={"DATA_FIN": dt.date(2020, 1, 1)},
    )
    add("unknown badge type", "badges", "unknown badge type", badge={"TIPO": "Q"})
    add("badge pers_id text", "badges", "PERS_ID is not an integer key", badge={"PERS_ID": "x"})
    dup = BASE + len(out)
    add("duplicate badge id", "badges", "duplicate BDG_ID", badge={"BDG_ID": dup})
    # ... and a second badge row with the same BDG_ID on another good career
    add("duplicate badge id (twin)", "badges", "duplicate BDG_ID", badge={"BDG_ID": dup}, key=str(dup))
    return out


def _rows(db: sqlite3.Connection, table: str, where: str, *args: Any) -> dict[str, Any]:
    cur = db.execute(f'SELECT * FROM "{table}" WHERE {where}', args)
    return dict(zip([d[0] for d in cur.description], cur.fetchone(), strict=True))


def _insert(db: sqlite3.Connection, table: str, row: dict[str, Any]) -> None:
    cols = ", ".join(f'"{c}"' for c in row)
    db.execute(f'INSERT INTO "{table}" ({cols}) VALUES ({", ".join("?" * len(row))})', list(row.values()))


def make_hostile_esse3(path: Path) -> list[Kind]:
    generate(f"sqlite:///{path}", seed=11, students=250, first_year=YEAR, last_year=YEAR, now=NOW)
    db = sqlite3.connect(path, detect_types=sqlite3.PARSE_DECLTYPES)
    with db:
        for table in ("P01_STU", "P01_BADGE", "P01_ANAPER"):  # key-less copies, as a view would be
            db.execute(f'ALTER TABLE "{table}" RENAME TO "{table}_T"')
            db.execute(f'CREATE TABLE "{table}" AS SELECT * FROM "{table}_T"')
            db.execute(f'DROP TABLE "{table}_T"')
        live_badge = 'SELECT "STU_ID" FROM "P01_BADGE" WHERE "ANN_FLG" = 0 AND "DATA_FIN" > ?'
        where = f'"STA_STU_COD" = \'A\' AND "STU_ID" IN ({live_badge}) ORDER BY "STU_ID" LIMIT 1'
        template_stu = _rows(db, "P01_STU", where, NOW.date().isoformat())
        template_person = _rows(db, "P01_ANAPER", '"PERS_ID" = ?', template_stu["PERS_ID"])
        template_badge = _rows(db, "P01_BADGE", '"STU_ID" = ?', template_stu["STU_ID"])
        found = kinds()
        for k in found:
            _insert(db, "P01_STU", template_stu | {"DATA_MOD": NOW} | k.stu)
            person = template_person | {"PERS_ID": k.stu["PERS_ID"], "DATA_MOD": NOW} | k.anaper
            _insert(
                db,
                "P01_ANAPER",
                person | {"EMAIL_ATE": person["EMAIL_ATE"] and f"h{k.stu['MATRICOLA']}@unife.it"} | k.anaper,
            )
            _insert(db, "P01_BADGE", template_badge | {"DATA_MOD": NOW} | k.badge)
    db.close()
    return found


@pytest.fixture
def world(emulator: EmulatorProcess, state_url: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    found = make_hostile_esse3(tmp_path / "esse3-unife.sqlite")
    settings = demo_settings(tmp_path, state_url, academic_years={"first": YEAR, "last": YEAR})
    rt = Runtime(replace(settings, router=replace(settings.router, url=emulator.url)))
    upgrade(rt.engine)
    yield rt, found
    rt.dispose()


def run_chain(rt: Runtime) -> CallReport:
    ateneo, p, report = rt.settings.ateneo("unife"), Partition(YEAR, "unife"), CallReport()
    source = rt.esse3("unife")
    ingest_careers(rt.engine, source, ateneo, p, today=NOW.date())
    assign_esis(rt.engine, source, lambda: rt.router_client("unife"), ateneo, p, report)
    ingest_badges(rt.engine, source, p)
    sync_cards(rt.engine, lambda: rt.router_client("unife"), ateneo, p, report)
    return report


def test_hostile_rows_are_quarantined_precisely_and_the_rest_goes_on(
    world, emulator: EmulatorProcess
) -> None:  # type: ignore[no-untyped-def]
    rt, found = world
    assert len(found) >= 30
    run_chain(rt)
    run_chain(rt)  # a rerun changes nothing and crashes on nothing
    with rt.engine.connect() as conn:
        quarantine = {
            (q.stage, q.source_key): q.reason
            for q in conn.execute(select(Quarantine).where(Quarantine.resolved_at.is_(None)))
        }
        persons = conn.execute(select(Person.pers_id, Person.state, Person.esi)).all()
        cards = conn.execute(select(Card.bdg_id, Card.state)).all()
        watermarks = conn.execute(select(Watermark.source_table, Watermark.data_mod)).all()
    missing = [
        (k.name, k.stage, k.key, quarantine.get((k.stage, k.key)))
        for k in found
        if k.reason not in (quarantine.get((k.stage, k.key)) or "")
    ]
    assert not missing, missing
    hostile_pers = {k.stu["PERS_ID"] for k in found if k.stage == "careers"}
    registered = {p.pers_id for p in persons if p.state == "registered"}
    assert registered and not registered & hostile_pers  # no wrong or hostile person registered
    assert BASE + [k.name for k in found].index("another ESI on the career") not in registered
    hostile_badges = {k.badge["BDG_ID"] for k in found if k.stage == "badges"}
    assert cards and not {c.bdg_id for c in cards} & hostile_badges
    # the Router holds exactly what is registered locally: nothing of the hostile rows
    counts = emulator.stats()["organisations"]["999978433"]
    assert counts["persons"] == len(registered)
    assert counts["cards"] == sum(1 for c in cards if c.state == "registered")
    limit = dt.datetime.now() + dt.timedelta(minutes=15)
    assert watermarks and all(w.data_mod <= limit for w in watermarks)
    # ... and the rows dated 2100 do not make the year look changed forever (sensor, `esc-sync sync`)
    with rt.engine.connect() as conn:
        marks = all_watermarks(conn)
    markers = rt.esse3("unife").change_markers(future_cutoff(dt.datetime.now(), dt.timedelta(minutes=15)))
    assert changed_partitions("unife", markers, marks, [YEAR], WATCHED_TABLES) == []
    assert changed_partitions("unife", rt.esse3("unife").change_markers(), marks, [YEAR], WATCHED_TABLES)

    # incremental sync is not frozen: a later change of a good row is seen
    with rt.engine.connect() as conn:
        stu_id = conn.execute(select(Career.stu_id).where(Career.status == "A")).scalars().first()
    with sqlite3.connect(rt.settings.home / "esse3-unife.sqlite") as db:
        db.execute(
            'UPDATE "P01_STU" SET "STA_STU_COD" = \'S\', "DATA_MOD" = ? WHERE "STU_ID" = ?',
            (dt.datetime.now().replace(microsecond=0).isoformat(" "), stu_id),
        )
    result = ingest_careers(
        rt.engine, rt.esse3("unife"), rt.settings.ateneo("unife"), Partition(YEAR, "unife")
    )
    assert result.updated >= 1


def test_an_upper_case_esi_prefix_on_the_career_is_the_same_esi(world) -> None:  # type: ignore[no-untyped-def]
    rt, _found = world
    run_chain(rt)
    with rt.engine.connect() as conn:
        person = conn.execute(select(Person.pers_id, Person.esi).where(Person.state == "registered")).first()
    shouted = "URN:SCHAC:PERSONALUNIQUECODE:INT:ESI:" + person.esi.split(":esi:", 1)[1]
    with sqlite3.connect(rt.settings.home / "esse3-unife.sqlite") as db:
        db.execute(
            'UPDATE "P01_STU" SET "CODICE_ESI" = ?, "DATA_MOD" = ? WHERE "PERS_ID" = ?',
            (shouted, dt.datetime.now().replace(microsecond=0).isoformat(" "), person.pers_id),
        )
        careers = [
            str(r[0])
            for r in db.execute('SELECT "STU_ID" FROM "P01_STU" WHERE "PERS_ID" = ?', (person.pers_id,))
        ]
    report = run_chain(rt)
    assert report.counts["written_back"] == 0 and report.counts["updated"] == 0
    with rt.engine.connect() as conn:
        flagged = conn.execute(
            select(Quarantine.source_key).where(
                Quarantine.resolved_at.is_(None), Quarantine.source_key.in_(careers)
            )
        ).scalars().all()  # fmt: skip
    assert flagged == []  # the same ESI, not a conflict
    with sqlite3.connect(rt.settings.home / "esse3-unife.sqlite") as db:
        on_esse3 = db.execute('SELECT "CODICE_ESI" FROM "P01_STU" WHERE "PERS_ID" = ?', (person.pers_id,))
        assert {r[0] for r in on_esse3} == {shouted}  # left as the university wrote it
