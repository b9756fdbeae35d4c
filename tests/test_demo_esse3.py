"""The demo Esse3 database: generator proportions, deliberately bad careers, and the mutation batches."""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, make_url, select, text

from etl.demo.generate import BAD_KINDS, generate, is_generated
from etl.demo.mutate import MutationStats, mutate
from etl.demo.schema import P01_ANAPER, P01_BADGE, P01_STU, P06_CDS
from etl.demo.snapshot import VALID_EMAIL, detect_bad
from etl.errors import EscSyncError

NOW = dt.datetime(2025, 11, 20, 12, 0, 0)
STUDENTS = 4000
DURATION = {"L2": 3, "LM": 2, "LM5": 5, "D": 3, "CS": 1}
TABLES = (P06_CDS, P01_ANAPER, P01_STU, P01_BADGE)


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def dump(url: str) -> dict[str, dict[int, dict[str, Any]]]:
    """Every table as {primary key: row}."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            out = {}
            for t in TABLES:
                pk = next(iter(t.primary_key.columns))
                out[t.name] = {r[pk.name]: dict(r) for r in conn.execute(select(t)).mappings()}
            return out
    finally:
        engine.dispose()


def copy_db(src: Path, dst: Path) -> str:
    for suffix in ("", "-wal", "-shm"):
        if Path(f"{src}{suffix}").exists():
            shutil.copy(f"{src}{suffix}", f"{dst}{suffix}")
    return sqlite_url(dst)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any, dict]:
    path = tmp_path_factory.mktemp("esse3") / "base.sqlite"
    stats = generate(sqlite_url(path), seed=7, students=STUDENTS, now=NOW, email_domain="studenti.unife.it")
    return path, stats, dump(sqlite_url(path))


# --- generate -----------------------------------------------------------------------------------------


def test_same_inputs_same_data_other_seed_other_data(base, tmp_path):
    _, stats, data = base
    again = tmp_path / "again.sqlite"
    stats2 = generate(sqlite_url(again), seed=7, students=STUDENTS, now=NOW, email_domain="studenti.unife.it")
    assert stats2 == stats
    assert dump(sqlite_url(again)) == data
    other = tmp_path / "other.sqlite"
    generate(sqlite_url(other), seed=8, students=STUDENTS, now=NOW, email_domain="studenti.unife.it")
    assert dump(sqlite_url(other))["P01_STU"] != data["P01_STU"]


def test_counts_ids_and_timestamps(base):
    _, stats, data = base
    careers, persons, badges, courses = (data[t] for t in ("P01_STU", "P01_ANAPER", "P01_BADGE", "P06_CDS"))
    assert (stats.careers, stats.persons, stats.badges, stats.courses) == (
        len(careers),
        len(persons),
        len(badges),
        len(courses),
    )
    assert len(careers) == STUDENTS
    for rows in (careers, persons, badges, courses):
        assert sorted(rows) == list(range(1, len(rows) + 1))
        assert all(r["DATA_MOD"] < NOW for r in rows.values())
    # Spread over the past, not bunched at generation time.
    assert len({r["DATA_MOD"].year for r in careers.values()}) >= 6
    assert {r["PERS_ID"] for r in careers.values()} == set(persons)
    assert all(r["CODICE_ESI"] is None for r in careers.values())
    matricole = [r["MATRICOLA"] for r in careers.values()]
    assert all(re.fullmatch(r"\d+", m) and int(m) >= 100000 for m in matricole)


def test_courses(base):
    courses = base[2]["P06_CDS"]
    types = Counter(c["TIPO_CORSO_COD"] for c in courses.values())
    assert 15 <= len(courses) <= 25
    assert set(types) == {"L2", "LM", "LM5", "D", "CS"}
    assert 1 <= types["CS"] <= 3
    assert len({c["COD"] for c in courses.values()}) == len(courses)


def test_two_career_persons_are_bachelor_then_master(base):
    data = base[2]
    courses = data["P06_CDS"]
    by_person = defaultdict(list)
    for c in data["P01_STU"].values():
        by_person[c["PERS_ID"]].append(c)
    two = [sorted(cs, key=lambda c: c["STU_ID"]) for cs in by_person.values() if len(cs) == 2]
    assert all(len(cs) <= 2 for cs in by_person.values())
    assert 0.10 <= len(two) / len(by_person) <= 0.20
    for bachelor, master in two:
        assert courses[bachelor["CDS_ID"]]["TIPO_CORSO_COD"] == "L2"
        assert courses[master["CDS_ID"]]["TIPO_CORSO_COD"] == "LM"
        assert (bachelor["STA_STU_COD"], bachelor["MOT_STASTU_COD"]) == ("X", "TIT")
        assert master["AA_ID"] == bachelor["AA_ID"] + 3 <= 2025
        assert bachelor["DATA_IMM"] < bachelor["DATA_CHIUSURA"]
        if master["DATA_IMM"]:
            assert bachelor["DATA_CHIUSURA"] < master["DATA_IMM"]
        assert bachelor["MATRICOLA"] != master["MATRICOLA"]


def test_statuses(base):
    _, stats, data = base
    bad = {s for ids in stats.bad.values() for s in ids}
    careers = [c for c in data["P01_STU"].values() if c["STU_ID"] not in bad]
    status = Counter(c["STA_STU_COD"] for c in careers)
    n = len(careers)
    assert 0.03 <= status["I"] / n <= 0.08
    assert status["S"] > 0 and status["A"] > n / 3
    provisional = [c for c in careers if c["STA_STU_COD"] == "I"]
    assert all(c["DATA_IMM"] is None and c["DATA_CHIUSURA"] is None for c in provisional)
    assert sum(c["AA_ID"] == 2025 for c in provisional) > len(provisional) / 2
    for c in careers:
        if c["STA_STU_COD"] != "I":
            assert c["DATA_IMM"] is not None
            assert c["DATA_IMM"].year == c["AA_ID"] and c["DATA_IMM"].month >= 8
            assert c["DATA_IMM"] < NOW.date()
        if c["STA_STU_COD"] == "X":
            assert c["MOT_STASTU_COD"] in {"TIT", "RIN", "DEC"}
            assert c["DATA_IMM"] < c["DATA_CHIUSURA"] < NOW.date()
        else:
            assert c["MOT_STASTU_COD"] is None and c["DATA_CHIUSURA"] is None
    assert {c["MOT_STASTU_COD"] for c in careers if c["STA_STU_COD"] == "X"} == {"TIT", "RIN", "DEC"}

    def closed_share(year: int) -> float:
        rows = [c for c in careers if c["AA_ID"] == year]
        return sum(c["STA_STU_COD"] == "X" for c in rows) / len(rows)

    assert closed_share(2019) > 0.4 > 0.1 > closed_share(2025)
    years = Counter(c["AA_ID"] for c in careers)
    assert set(years) == set(range(2019, 2026)) and years[2025] > years[2019]


def test_persons(base):
    persons = list(base[2]["P01_ANAPER"].values())
    bad = base[1].bad
    n = len(persons)
    consent = Counter(p["CONSENSO_ESC"] for p in persons)
    assert 0.75 <= consent["S"] / n <= 0.85
    assert 0.06 <= consent["N"] / n <= 0.14 and 0.06 <= consent[None] / n <= 0.14
    no_cf = [p for p in persons if p["COD_FIS"] is None]
    assert 0.01 <= len(no_cf) / n <= 0.06
    cf = re.compile(r"[A-Z]{6}\d{2}[ABCDEHLMPRST]\d{2}[A-Z]\d{3}[A-Z]")
    assert all(cf.fullmatch(p["COD_FIS"]) for p in persons if p["COD_FIS"])
    assert all(p["DATA_NASCITA"].year < 2008 for p in persons)
    assert all(VALID_EMAIL.match(p["EMAIL"]) for p in persons)
    good = [p for p in persons if VALID_EMAIL.match(p["EMAIL_ATE"])]
    assert len(good) == n - len(bad["malformed_email"])
    assert all(p["EMAIL_ATE"].endswith("@studenti.unife.it") for p in good)
    assert len({p["EMAIL_ATE"] for p in persons}) == n  # namesakes get nome.cognome2, 3, ...
    assert all(re.fullmatch(r"[a-z]+\.[a-z]+\d*", p["EMAIL_ATE"].split("@")[0]) for p in good)


def test_badges(base):
    _, stats, data = base
    careers, badges = data["P01_STU"], list(data["P01_BADGE"].values())
    courses = data["P06_CDS"]
    bad = {s for ids in stats.bad.values() for s in ids}
    finalised = [
        c
        for c in careers.values()
        if c["STA_STU_COD"] in "ASX" and c["DATA_IMM"] is not None and c["STU_ID"] not in bad
    ]
    with_badge = {b["STU_ID"] for b in badges}
    assert with_badge <= {c["STU_ID"] for c in finalised}
    assert 0.85 <= len(with_badge) / len(finalised) <= 0.95
    kinds = Counter(b["TIPO"] for b in badges)
    assert 0.62 <= kinds["V"] / len(badges) <= 0.78 and set(kinds) == {"V", "F"}
    for b in badges:
        c = careers[b["STU_ID"]]
        assert b["PERS_ID"] == c["PERS_ID"]
        tipo = courses[c["CDS_ID"]]["TIPO_CORSO_COD"]
        assert b["DATA_FIN"] == dt.date(c["AA_ID"] + DURATION[tipo] + 1, 10, 31)
        assert (b["DATA_STAMPA"] is not None) == (b["TIPO"] == "F")
        assert b["ANN_FLG"] in (0, 1)
    annulled = [b for b in badges if b["ANN_FLG"] == 1]
    assert 0.01 <= len(annulled) / len(badges) <= 0.06
    by_career = defaultdict(list)
    for b in badges:
        by_career[b["STU_ID"]].append(b)
    for b in annulled:
        first, replacement = sorted(by_career[b["STU_ID"]], key=lambda x: x["BDG_ID"])
        assert first is b and replacement["ANN_FLG"] == 0
        assert replacement["DATA_INI"] > b["DATA_INI"] == careers[b["STU_ID"]]["DATA_IMM"]
    for c, bs in by_career.items():
        if len(bs) == 1:
            assert bs[0]["ANN_FLG"] == 0 and bs[0]["DATA_INI"] == careers[c]["DATA_IMM"]


def test_bad_careers_are_really_bad(base):
    path, stats, data = base
    careers, persons, courses = data["P01_STU"], data["P01_ANAPER"], data["P06_CDS"]
    assert set(stats.bad) == set(BAD_KINDS)
    assert all(len(ids) >= 1 for ids in stats.bad.values())
    total = sum(len(ids) for ids in stats.bad.values())
    assert 0.005 * STUDENTS <= total <= 0.015 * STUDENTS
    pers_count = Counter(c["PERS_ID"] for c in careers.values())
    for kind, ids in stats.bad.items():
        for s in ids:
            c = careers[s]
            p = persons[c["PERS_ID"]]
            # Otherwise eligible: finalised and active.
            assert c["STA_STU_COD"] == "A" and c["DATA_IMM"] is not None
            if kind == "missing_name":
                assert not (p["NOME"] or "").strip() or not (p["COGNOME"] or "").strip()
                assert pers_count[c["PERS_ID"]] == 1
            elif kind == "malformed_email":
                assert not VALID_EMAIL.match(p["EMAIL_ATE"])
                assert "@@" in p["EMAIL_ATE"] or "@" not in p["EMAIL_ATE"]
            elif kind == "future_enrolment":
                assert c["DATA_IMM"] > NOW.date() and c["DATA_MOD"] < NOW
            elif kind == "duplicate_matricola":
                twins = [o for o in careers.values() if o["MATRICOLA"] == c["MATRICOLA"]]
                assert len(twins) == 2 and min(o["STU_ID"] for o in twins) < s
            else:
                assert c["CDS_ID"] not in courses
    good = [c for c in careers.values() if c["STU_ID"] not in {s for v in stats.bad.values() for s in v}]
    assert all(c["CDS_ID"] in courses for c in good)
    assert len({c["MATRICOLA"] for c in good}) == len(good)
    # The data alone tells the same story (mutate relies on it).
    assert detect_bad(sqlite_url(path), NOW) == stats.bad


def test_refuses_to_generate_twice(tmp_path):
    url = sqlite_url(tmp_path / "twice.sqlite")
    assert not is_generated(url)
    assert not (tmp_path / "twice.sqlite").exists()
    generate(url, seed=1, students=200, now=NOW)
    assert is_generated(url)
    before = dump(url)
    with pytest.raises(EscSyncError, match="already"):
        generate(url, seed=2, students=200, now=NOW)
    assert dump(url) == before


def test_now_early_in_the_last_year_keeps_everything_in_the_past(tmp_path):
    now = dt.datetime(2025, 8, 20, 9, 0)
    url = sqlite_url(tmp_path / "early.sqlite")
    stats = generate(url, seed=3, students=600, now=now)
    data = dump(url)
    bad_future = set(stats.bad["future_enrolment"])
    for c in data["P01_STU"].values():
        assert c["DATA_MOD"] < now
        if c["DATA_IMM"] and c["STU_ID"] not in bad_future:
            assert c["DATA_IMM"] < now.date()
    assert all(b["DATA_MOD"] < now and b["DATA_INI"] < now.date() for b in data["P01_BADGE"].values())


# --- mutate -------------------------------------------------------------------------------------------

LATER = NOW + dt.timedelta(days=1, hours=2)


def years_of_changed(before: dict, after: dict, now: dt.datetime) -> tuple[dict[str, set[int]], set[int]]:
    """Keys of rows added or changed per table, checking each changed row has DATA_MOD == now."""
    changed: dict[str, set[int]] = {}
    for table, rows in after.items():
        keys = set()
        for k, row in rows.items():
            if before[table].get(k) != row:
                assert row["DATA_MOD"] == now, (table, k)
                keys.add(k)
            else:
                assert row["DATA_MOD"] < now
        assert set(before[table]) <= set(rows)  # nothing deleted
        changed[table] = keys
    careers = after["P01_STU"]
    years = {careers[s]["AA_ID"] for s in changed["P01_STU"]}
    years |= {c["AA_ID"] for c in careers.values() if c["PERS_ID"] in changed["P01_ANAPER"]}
    years |= {careers[after["P01_BADGE"][b]["STU_ID"]]["AA_ID"] for b in changed["P01_BADGE"]}
    return changed, years


def test_mutate_touches_only_what_it_reports(base, tmp_path):
    path, gen_stats, before = base
    url = copy_db(path, tmp_path / "m.sqlite")
    stats = mutate(url, seed=11, now=LATER, size=60)
    after = dump(url)
    changed, years = years_of_changed(before, after, LATER)
    assert stats.touched_years == years

    new_careers = set(after["P01_STU"]) - set(before["P01_STU"])
    new_persons = set(after["P01_ANAPER"]) - set(before["P01_ANAPER"])
    new_badges = set(after["P01_BADGE"]) - set(before["P01_BADGE"])
    assert stats.new_enrolments == len(new_careers) == len(new_persons) > 0
    updated = stats.finalisations + stats.closures + stats.reactivations
    assert len(changed["P01_STU"]) == len(new_careers) + updated
    assert len(changed["P01_ANAPER"]) == len(new_persons) + stats.email_changes + stats.fixed
    assert len(new_badges) == stats.new_badges + stats.annulled_badges
    assert len(changed["P01_BADGE"]) == len(new_badges) + stats.annulled_badges + stats.renewed_badges
    assert min(stats.finalisations, stats.closures, stats.reactivations, stats.new_badges) > 0
    assert min(stats.annulled_badges, stats.email_changes) > 0 and stats.fixed == 1

    max_aa = max(c["AA_ID"] for c in before["P01_STU"].values())
    for s in new_careers:
        c = after["P01_STU"][s]
        assert (c["STA_STU_COD"], c["DATA_IMM"], c["AA_ID"]) == ("I", None, max_aa)
        assert c["PERS_ID"] in new_persons and c["CDS_ID"] in after["P06_CDS"]
    matricole = [c["MATRICOLA"] for c in after["P01_STU"].values()]
    assert len(set(matricole)) == len(matricole) - len(gen_stats.bad["duplicate_matricola"])

    transitions = Counter()
    for s in changed["P01_STU"] - new_careers:
        old, new = before["P01_STU"][s], after["P01_STU"][s]
        transitions[old["STA_STU_COD"], new["STA_STU_COD"]] += 1
        if new["STA_STU_COD"] == "X":
            assert new["MOT_STASTU_COD"] in {"TIT", "RIN"} and new["DATA_CHIUSURA"] > new["DATA_IMM"]
        elif old["STA_STU_COD"] == "I":
            assert 0 < (LATER.date() - new["DATA_IMM"]).days <= 7
        else:
            assert new["MOT_STASTU_COD"] is None and new["DATA_CHIUSURA"] is None
    assert transitions == {
        ("I", "A"): stats.finalisations,
        ("A", "X"): stats.closures,
        ("X", "A"): stats.reactivations,
    }

    updated_badges = changed["P01_BADGE"] - new_badges
    annulled = [b for b in updated_badges if after["P01_BADGE"][b]["ANN_FLG"] == 1]
    renewed = [b for b in updated_badges if after["P01_BADGE"][b]["ANN_FLG"] == 0]
    assert (len(annulled), len(renewed)) == (stats.annulled_badges, stats.renewed_badges)
    for b in annulled:
        assert before["P01_BADGE"][b]["ANN_FLG"] == 0
    for b in renewed:  # a reactivated career's badge that had run out, renewed to the end of the year
        assert before["P01_BADGE"][b]["DATA_FIN"] < LATER.date() < after["P01_BADGE"][b]["DATA_FIN"]
    replaced = {after["P01_BADGE"][b]["STU_ID"] for b in annulled}
    for b in new_badges:
        row = after["P01_BADGE"][b]
        assert row["ANN_FLG"] == 0 and row["DATA_INI"] == LATER.date() <= row["DATA_FIN"]
        if row["STU_ID"] not in replaced:
            assert all(o["STU_ID"] != row["STU_ID"] for o in before["P01_BADGE"].values())

    # Bad rows are left alone, except the one fixed name.
    bad = {s for ids in gen_stats.bad.values() for s in ids}
    assert stats.fixed_stu_ids and set(stats.fixed_stu_ids) <= set(gen_stats.bad["missing_name"])
    fixed_person = after["P01_STU"][stats.fixed_stu_ids[0]]["PERS_ID"]
    assert after["P01_ANAPER"][fixed_person]["NOME"].strip() and after["P01_ANAPER"][fixed_person]["COGNOME"]
    assert not bad & changed["P01_STU"]
    bad_persons = {before["P01_STU"][s]["PERS_ID"] for s in bad}
    assert bad_persons & changed["P01_ANAPER"] == {fixed_person}
    remaining = detect_bad(url, LATER)
    assert remaining["missing_name"] == sorted(set(gen_stats.bad["missing_name"]) - set(stats.fixed_stu_ids))
    assert {k: v for k, v in remaining.items() if k != "missing_name"} == {
        k: v for k, v in gen_stats.bad.items() if k != "missing_name"
    }


def test_mutate_is_deterministic_and_batches_chain(base, tmp_path):
    path = base[0]
    a = copy_db(path, tmp_path / "a.sqlite")
    b = copy_db(path, tmp_path / "b.sqlite")
    assert mutate(a, seed=5, now=LATER, size=40) == mutate(b, seed=5, now=LATER, size=40)
    assert dump(a) == dump(b)
    # A second batch later on: also chains (new 'I' careers may get finalised, and so on).
    later = LATER + dt.timedelta(minutes=5)
    before = dump(a)
    stats = mutate(a, seed=5, now=later, size=40)
    _, years = years_of_changed(before, dump(a), later)
    assert stats.touched_years == years and stats != MutationStats()


def test_small_batches_report_exactly_the_years_they_touch(tmp_path):
    # Small batches touch only some years, so a missed year cannot hide behind the others.
    url = sqlite_url(tmp_path / "small.sqlite")
    generate(url, seed=2, students=800, now=NOW)
    before, now, partial = dump(url), LATER, 0
    for i in range(6):
        now += dt.timedelta(hours=1)
        stats = mutate(url, seed=i, now=now, size=6)
        after = dump(url)
        _, years = years_of_changed(before, after, now)
        assert stats.touched_years == years
        partial += len(years) < 7
        before = after
    assert partial >= 3


def test_mutate_refuses_a_now_not_after_the_data(base, tmp_path):
    path, _, before = base
    url = copy_db(path, tmp_path / "r.sqlite")
    latest = max(r["DATA_MOD"] for t in ("P01_STU", "P01_ANAPER", "P01_BADGE") for r in before[t].values())
    for now in (latest, latest - dt.timedelta(days=3)):
        with pytest.raises(EscSyncError, match="later than"):
            mutate(url, seed=1, now=now)
    assert dump(url) == before
    with pytest.raises(EscSyncError, match="generate"):
        mutate(sqlite_url(tmp_path / "missing.sqlite"), seed=1, now=LATER)
    assert not (tmp_path / "missing.sqlite").exists()
    empty = tmp_path / "empty.sqlite"
    create_engine(sqlite_url(empty)).connect().close()
    with pytest.raises(EscSyncError, match="generate"):
        mutate(sqlite_url(empty), seed=1, now=LATER)


# --- PostgreSQL -----------------------------------------------------------------------------------------


@pytest.mark.postgres
def test_generate_and_mutate_on_postgresql():
    pg_url = os.environ.get("ESC_SYNC_TEST_PG_URL")
    if not pg_url:
        if os.environ.get("ESC_SYNC_REQUIRE_PG") == "1":
            pytest.fail("ESC_SYNC_REQUIRE_PG=1 but ESC_SYNC_TEST_PG_URL is not set")
        pytest.skip("ESC_SYNC_TEST_PG_URL not set")
    name = f"esc_demo_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        url = make_url(pg_url).set(database=name).render_as_string(hide_password=False)
        assert not is_generated(url)
        stats = generate(url, seed=4, students=600, now=NOW)
        assert is_generated(url)
        data = dump(url)
        assert len(data["P01_STU"]) == stats.careers == 600
        assert all(r["DATA_MOD"] < NOW for r in data["P01_STU"].values())
        assert detect_bad(url, NOW) == stats.bad
        with pytest.raises(EscSyncError, match="already"):
            generate(url, seed=4, students=600, now=NOW)
        m = mutate(url, seed=1, now=LATER, size=30)
        _, years = years_of_changed(data, dump(url), LATER)
        assert m.touched_years == years
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
