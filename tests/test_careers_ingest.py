"""Careers ingestion from a generated Esse3 into the state DB (SQLite and PostgreSQL): counts,
quarantine with precise reasons, idempotence, per-partition watermarks, atomicity."""

from __future__ import annotations

import datetime as dt
from collections import namedtuple
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select, text, update

from etl.assets.careers import ingest_careers
from etl.changes import changed_partitions
from etl.demo.generate import generate
from etl.demo.schema import P01_ANAPER, P01_STU
from etl.domain.career_batch import ReadCareer, prepare_batch
from etl.domain.careers import CAREER_TABLES, SOURCE_COLUMNS, CareerRecord, CareerRules
from etl.domain.enrolment import FinalisedRule
from etl.errors import EscSyncError
from etl.partitions import Partition
from etl.resources.esse3 import Esse3Source
from etl.store import careers as store
from etl.store import watermarks
from etl.store.models import Career, Quarantine
from tests.fixtures.world import NOW, demo_settings

YEARS = (2023, 2024, 2025)
TODAY = NOW.date()
REASON_OF_KIND = {
    "missing_name": "missing name",
    "malformed_email": "malformed e-mail",
    "future_enrolment": "enrolment dated in the future",
    "duplicate_matricola": "duplicate matricola",
    "unknown_course": "unknown course",
}


@pytest.fixture
def esse3(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'esse3-unife.sqlite'}"
    stats = generate(url, seed=5, students=1500, first_year=YEARS[0], last_year=YEARS[-1], now=NOW)
    source = Esse3Source("unife", url, batch_size=128)  # small batches: exercises batch boundaries
    yield url, stats, source
    source.dispose()


def sync_all(engine: Engine, source: Esse3Source, tmp_path: Path, years=YEARS) -> dict[int, object]:
    ateneo = demo_settings(tmp_path, "sqlite://").ateneo("unife")
    return {y: ingest_careers(engine, source, ateneo, Partition(y, "unife"), today=TODAY) for y in years}


def open_quarantine(engine: Engine) -> dict[int, str]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(Quarantine.source_key, Quarantine.reason).where(Quarantine.resolved_at.is_(None))
        )
        return {int(k): r for k, r in rows}


def test_first_sync_loads_good_rows_and_quarantines_each_bad_kind(state_engine, esse3, tmp_path) -> None:
    _url, stats, source = esse3
    results = sync_all(state_engine, source, tmp_path)
    quarantined = open_quarantine(state_engine)
    for kind, stu_ids in stats.bad.items():
        assert stu_ids, f"generator produced no {kind}"
        for stu_id in stu_ids:
            assert REASON_OF_KIND[kind] in quarantined[stu_id], (kind, quarantined.get(stu_id))
    with state_engine.connect() as conn:
        careers = conn.execute(select(func.count()).select_from(Career)).scalar_one()
    assert careers + len(quarantined) == stats.careers  # nothing silently lost
    assert sum(r.inserted for r in results.values()) == careers
    assert not set(quarantined) & {r for r in _career_ids(state_engine)}


def _career_ids(engine: Engine) -> set[int]:
    with engine.connect() as conn:
        return set(conn.execute(select(Career.stu_id)).scalars())


def test_second_run_changes_nothing(state_engine, esse3, tmp_path) -> None:
    _, _, source = esse3
    sync_all(state_engine, source, tmp_path)
    with state_engine.connect() as conn:
        marks = watermarks.all_watermarks(conn)
        before = conn.execute(select(Career.stu_id, Career.row_hash, Career.updated_at)).all()
    again = sync_all(state_engine, source, tmp_path)
    assert all(r.inserted == 0 and r.updated == 0 for r in again.values())
    with state_engine.connect() as conn:
        assert watermarks.all_watermarks(conn) == marks
        assert conn.execute(select(Career.stu_id, Career.row_hash, Career.updated_at)).all() == before
    assert changed_partitions("unife", source.change_markers(), marks, YEARS, CAREER_TABLES) == []


def test_backfill_of_one_year_never_moves_another_years_watermark(state_engine, esse3, tmp_path) -> None:
    _, _, source = esse3
    sync_all(state_engine, source, tmp_path, years=(2024,))
    with state_engine.connect() as conn:
        marks = watermarks.all_watermarks(conn)
    assert {k for k, _ in marks} == {"2024|unife"}
    assert {t for _, t in marks} == set(CAREER_TABLES)
    sync_all(state_engine, source, tmp_path, years=(2025,))
    with state_engine.connect() as conn:
        after = watermarks.all_watermarks(conn)
    assert {k: v for k, v in after.items() if k[0] == "2024|unife"} == marks
    pending = changed_partitions("unife", source.change_markers(), after, YEARS, CAREER_TABLES)
    assert [c.partition.academic_year for c in pending] == [2023]


def test_fixing_the_source_row_clears_the_quarantine(state_engine, esse3, tmp_path) -> None:
    _url, stats, source = esse3
    sync_all(state_engine, source, tmp_path)
    stu_id = stats.bad["missing_name"][0]
    src = source.engine
    with src.begin() as conn:
        pers_id = conn.execute(select(P01_STU.c.PERS_ID).where(stu_id == P01_STU.c.STU_ID)).scalar_one()
        # Fixed without touching DATA_MOD, as a hand fix in a SQL console might be.
        conn.execute(
            update(P01_ANAPER).where(pers_id == P01_ANAPER.c.PERS_ID).values(NOME="Maria", COGNOME="Neri")
        )
    sync_all(state_engine, source, tmp_path)
    assert stu_id not in open_quarantine(state_engine)
    assert stu_id in _career_ids(state_engine)
    with state_engine.connect() as conn:
        resolved = conn.execute(
            select(Quarantine.resolved_at).where(Quarantine.source_key == str(stu_id))
        ).scalar_one()
    assert resolved is not None


def test_mutation_is_synced_for_the_changed_partitions_only(state_engine, esse3, tmp_path) -> None:
    from etl.demo.mutate import mutate

    url, _, source = esse3
    sync_all(state_engine, source, tmp_path)
    m = mutate(url, seed=3, now=NOW + dt.timedelta(hours=1), size=30)
    with state_engine.connect() as conn:
        marks = watermarks.all_watermarks(conn)
    pending = changed_partitions("unife", source.change_markers(), marks, YEARS, CAREER_TABLES)
    assert {c.partition.academic_year for c in pending} == m.touched_years & set(YEARS)
    results = sync_all(state_engine, source, tmp_path, years=[c.partition.academic_year for c in pending])
    assert sum(r.inserted + r.updated for r in results.values()) > 0
    with state_engine.connect() as conn:
        assert (
            changed_partitions(
                "unife", source.change_markers(), watermarks.all_watermarks(conn), YEARS, CAREER_TABLES
            )
            == []
        )


class FailingSource:
    """Yields the first batch of the real source, then fails like a dropped Esse3 connection."""

    def __init__(self, real: Esse3Source) -> None:
        self.real = real

    def changed_careers(self, *args, **kwargs):
        batches = self.real.changed_careers(*args, **kwargs)
        yield next(batches)
        raise EscSyncError("university unife: Esse3 unreachable or failed: connection lost")

    def careers_by_id(self, *args, **kwargs):
        return self.real.careers_by_id(*args, **kwargs)


def test_a_failure_mid_partition_writes_nothing(state_engine, esse3, tmp_path) -> None:
    _, _, source = esse3
    ateneo = demo_settings(tmp_path, "sqlite://").ateneo("unife")
    with pytest.raises(EscSyncError, match="connection lost"):
        ingest_careers(state_engine, FailingSource(source), ateneo, Partition(2024, "unife"), today=TODAY)
    with state_engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Career)).scalar_one() == 0
        assert watermarks.all_watermarks(conn) == {}
        assert conn.execute(select(func.count()).select_from(Quarantine)).scalar_one() == 0


def test_missing_table_and_unreachable_source_fail_with_one_line(tmp_path) -> None:
    with pytest.raises(
        EscSyncError, match=r"university unife: Esse3 database file .*absent.sqlite not found"
    ):
        Esse3Source("unife", f"sqlite:///{tmp_path / 'absent.sqlite'}")
    assert not (tmp_path / "absent.sqlite").exists()  # never created empty
    (tmp_path / "empty.sqlite").touch()  # a file without the tables
    empty = Esse3Source("unife", f"sqlite:///{tmp_path / 'empty.sqlite'}")
    with pytest.raises(EscSyncError) as e:
        list(empty.changed_careers(2024, {}, dt.timedelta(0)))
    assert str(e.value).startswith("university unife: Esse3") and "P01_STU" in str(e.value)
    assert "\n" not in str(e.value)
    with pytest.raises(EscSyncError, match="university unife: Esse3"):
        empty.change_markers()
    down = Esse3Source("unife", "postgresql+psycopg://nobody:pw@127.0.0.1:1/esse3")
    with pytest.raises(EscSyncError) as e:
        down.check()
    assert "university unife: Esse3" in str(e.value) and "pw" not in str(e.value)


def test_batch_size_does_not_change_the_result(state_engine, esse3, tmp_path) -> None:
    url, _stats, _ = esse3
    big = Esse3Source("unife", url, batch_size=100_000)
    rows_small = [
        r[0]
        for b in Esse3Source("unife", url, batch_size=7).changed_careers(2024, {}, dt.timedelta(0))
        for r in b
    ]
    rows_big = [r[0] for b in big.changed_careers(2024, {}, dt.timedelta(0)) for r in b]
    assert rows_small == rows_big and len(rows_big) == len(set(rows_big)) > 0
    with big.engine.connect() as conn:
        n = conn.execute(text('SELECT COUNT(*) FROM "P01_STU" WHERE "AA_ID" = 2024')).scalar_one()
    assert len(rows_big) == n


def test_a_career_inserted_by_another_run_meanwhile_is_merged(state_engine, esse3, tmp_path) -> None:
    """The backfill's fast path COPYs careers it did not find; one that another run inserted in between
    makes that COPY fail, and the batch is merged instead."""
    _, _, source = esse3
    sync_all(state_engine, source, tmp_path, years=(2024,))
    with state_engine.connect() as conn:
        columns = [Career.__table__.c[f] for f in CareerRecord._fields]
        record = CareerRecord(*conn.execute(select(*columns).limit(1)).one())
    fresh = record._replace(stu_id=10**8, matricola="X-NEW")
    changed = record._replace(first_name="Altro")
    with state_engine.begin() as conn:
        careers = [
            ReadCareer(changed, "h" * 32, NOW, "d" * 32),
            ReadCareer(fresh, "n" * 32, NOW, "e" * 32),
        ]
        store.upsert_careers(conn, "unife", careers, new=True)
    with state_engine.connect() as conn:
        ids = [record.stu_id, fresh.stu_id]
        names = dict(
            conn.execute(select(Career.stu_id, Career.first_name).where(Career.stu_id.in_(ids))).all()
        )
    assert names == {record.stu_id: "Altro", fresh.stu_id: record.first_name}


def test_overlong_source_values_are_quarantined_not_fatal(state_engine, esse3, tmp_path) -> None:
    """PostgreSQL refuses a value longer than its column: such a career is quarantined with the field
    named, and the rest of the partition goes on."""
    _, _, source = esse3
    with source.engine.begin() as conn:
        stu_id, pers_id = conn.execute(
            select(P01_STU.c.STU_ID, P01_STU.c.PERS_ID).where(P01_STU.c.AA_ID == 2024).limit(1)
        ).one()
        conn.execute(update(P01_ANAPER).where(P01_ANAPER.c.PERS_ID == pers_id).values(NOME="N" * 101))
    results = sync_all(state_engine, source, tmp_path, years=(2024,))
    assert results[2024].inserted > 0
    assert "NOME longer than 100 characters" in open_quarantine(state_engine)[stu_id]
    assert stu_id not in _career_ids(state_engine)


def test_a_source_query_missing_a_column_stops_with_one_line() -> None:
    """Sites adapt etl/sql/esse3/ (in their sql_dir); a column lost there stops the run naming it, not
    with a KeyError."""
    columns = [*SOURCE_COLUMNS, "STU_DATA_MOD", "ANAPER_DATA_MOD", "CDS_DATA_MOD"]
    rules = CareerRules(FinalisedRule(), {})
    Row = namedtuple("Row", [c for c in columns if c != "CONSENSO_ESC"])
    where = r"\(etl/sql/esse3/, or the site.s \[esse3\] sql_dir\)"
    with pytest.raises(EscSyncError, match=rf"^Esse3 careers query returns no CONSENSO_ESC {where}$"):
        prepare_batch([Row(*([None] * len(Row._fields)))], rules, TODAY)


def test_the_first_summer_hour_is_never_mistaken_for_the_future(state_engine, tmp_path) -> None:
    """2026-03-29, Europe/Rome: at 02:00 CET the clocks go to 03:00 CEST. A row Esse3 stamps 03:05 a
    minute after the change is read, and moves the watermark, when `[esse3] timezone` names Esse3's zone;
    a clock an hour behind (the machine on UTC+1, or on UTC) would take it for a row from the future
    and hold the watermark back, for good at each change of time."""
    from zoneinfo import ZoneInfo

    from etl.domain.esse3_time import esse3_now
    from etl.domain.source_reads import ReadPolicy

    written = dt.datetime(2026, 3, 29, 3, 5)
    url = f"sqlite:///{tmp_path / 'esse3-spring.sqlite'}"
    generate(url, seed=9, students=60, first_year=2025, last_year=2025, now=written)
    source = Esse3Source("unife", url)
    with source.engine.begin() as conn:  # every career touched at 03:05 CEST
        conn.execute(update(P01_STU).values(DATA_MOD=written))
    ateneo = demo_settings(tmp_path, "sqlite://").ateneo("unife")
    instant = dt.datetime(2026, 3, 29, 1, 6, tzinfo=dt.UTC)  # 03:06 CEST
    p = Partition(2025, "unife")

    utc = ReadPolicy(zone=ZoneInfo("UTC"))
    wrong = ingest_careers(
        state_engine, source, ateneo, p, today=TODAY, policy=utc, now=esse3_now(utc.zone, instant)
    )
    assert wrong.inserted == 0 and "DATA_MOD in the future (P01_STU)" in wrong.reasons
    rome = ReadPolicy(zone=ZoneInfo("Europe/Rome"))
    right = ingest_careers(
        state_engine, source, ateneo, p, today=TODAY, policy=rome, now=esse3_now(rome.zone, instant)
    )
    assert right.inserted > 0 and "DATA_MOD in the future (P01_STU)" not in right.reasons
    with state_engine.connect() as conn:
        assert watermarks.get_watermarks(conn, p.key)["P01_STU"] == written
    source.dispose()
