"""Esse3 is not a change log (issue 19): end to end through Dagster (`esc-sync sync` / `reconcile` run
in-process on a Dagster instance in the home) against the Router emulator over HTTP, state on SQLite
and PostgreSQL. After every step the Router is checked through its API against Esse3 itself: every
card it holds as valid belongs to a badge and a career that exist, are live, and belong to the person
whose ESI the card carries; and no export row, feed entry or badge pairs one person's ESI with another
person's name."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, text

from etl.api.app import create_app
from etl.api.tokens import create_token
from etl.changes import pending_partitions
from etl.config import load_settings
from etl.definitions import build_definitions
from etl.demo.config import DEMO_ATENEI, demo_config_toml, key_env
from etl.domain.esi import compose_esi
from etl.errors import ExitCode
from etl.orchestrate import ensure_instance, run_partitions
from etl.partitions import Partition
from etl.resources.router import RouterClient
from etl.resources.runtime import Runtime
from etl.store.db import make_engine
from etl.store.models import Card, Career, Export, Watermark
from tests.fixtures.world import KEYS, PICS, CliWorld, demo_home, use_home

pytestmark = pytest.mark.slow  # end to end, seconds to minutes each: `make test-quick` leaves them out

INST = "unife"
PIC, KEY = PICS[INST], KEYS[INST]
SCOPE = "unife.it"
# Esse3's wall clock when the demo data was written: 02:50 on 2026-10-25, inside the first pass of the
# hour Europe/Rome repeats that night (03:00 CEST → 02:00 CET).
GENERATED_AT = dt.datetime(2026, 10, 25, 2, 50)


class World(CliWorld):
    # --- Esse3 ---------------------------------------------------------------------------------------

    def esse3_do(self, sql: str, **params: Any) -> None:
        with self.esse3.begin() as conn:
            conn.execute(text(sql), params)

    def esse3_one(self, sql: str, **params: Any) -> Any:
        with self.esse3.connect() as conn:
            return conn.execute(text(sql), params).one()

    def watermark(self, year: int, table: str = "P01_STU") -> dt.datetime:
        with self.state.connect() as conn:
            return conn.execute(
                select(Watermark.data_mod).where(
                    Watermark.partition_key == f"{year}|{INST}", Watermark.source_table == table
                )
            ).scalar_one()

    def registered_career(self, year: int, skip: int = 0, **where: Any) -> Any:
        """A finalised active career of ``year`` whose badge carries an ACTIVE registered card."""
        with self.state.connect() as conn:
            rows = conn.execute(
                select(Career.stu_id, Career.pers_id, Career.matricola, Card.escn, Card.bdg_id)
                .join(Card, (Card.institution == Career.institution) & (Card.stu_id == Career.stu_id))
                .where(
                    Career.academic_year == year,
                    Card.state == "registered",
                    Card.router_status == "ACTIVE",
                    Card.expires_at > dt.date.today(),
                    Card.retired_at.is_(None),
                )
                .order_by(Career.stu_id)
            ).all()
        chosen = [r for r in rows if len([x for x in rows if x.stu_id == r.stu_id]) == 1]
        return chosen[skip]

    # --- the Router, through its API -----------------------------------------------------------------

    def router(self) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
        async def walk() -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
            async with RouterClient(
                base_url=self.emulator.url, api_key=KEY, institution=INST, pic=PIC, api_key_env=key_env(INST)
            ) as client:
                persons = {
                    p["identifier"]: await client.get_person(p["identifier"])
                    async for p in client.iter_persons()
                }
                cards = {
                    c["cardNumber"]: await client.get_card(c["cardNumber"]) async for c in client.iter_cards()
                }
            return persons, cards

        return asyncio.run(walk())

    def valid_cards(self) -> dict[str, str]:
        """ESCN → ESI of every card the Router says is valid now."""
        _, cards = self.router()
        today = dt.date.today().isoformat()
        return {
            n: c["person"]["identifier"]
            for n, c in cards.items()
            if c["cardStatusType"]["key"] == "ACTIVE" and c["expiresAt"][:10] >= today
        }

    def assert_router_tells_the_truth(self) -> None:
        """Every card valid at the Router is a live badge of a live career, finalised, of the person
        the card's ESI names; and the state DB agrees with the Router card for card."""
        valid = self.valid_cards()
        with self.state.connect() as conn:
            badge_of = dict(conn.execute(select(Card.escn, Card.bdg_id)).all())
        with self.esse3.connect() as conn:
            for escn, esi in valid.items():
                row = conn.execute(
                    text(
                        'SELECT s."PERS_ID", s."STA_STU_COD", b."ANN_FLG" FROM "P01_BADGE" b '
                        'JOIN "P01_STU" s ON s."STU_ID" = b."STU_ID" WHERE b."BDG_ID" = :b'
                    ),
                    {"b": badge_of[escn]},
                ).first()
                assert row is not None, (
                    f"card {escn} valid at the Router, its badge or career gone from Esse3"
                )
                pers_id, status, annulled = row
                assert status in ("A", "S") and not annulled, f"card {escn} valid, its career {status}"
                assert esi == compose_esi(SCOPE, pers_id), f"card {escn} valid under another person's ESI"
        with self.state.connect() as conn:
            local_active = set(
                conn.execute(
                    select(Card.escn).where(
                        Card.state == "registered",
                        Card.router_status == "ACTIVE",
                        Card.expires_at >= dt.date.today(),
                    )
                ).scalars()
            )
        assert local_active == set(valid)

    def assert_names_match_esis(self) -> None:
        """No export row or badge pairs one person's ESI with another person's name."""
        names = self.names()
        for year in (2024, 2025):
            with self.state.connect() as conn:
                path = conn.execute(
                    select(Export.parquet_path)
                    .where(Export.institution == INST, Export.academic_year == year, Export.kind == "full")
                    .where(Export.status == "ready")
                    .order_by(Export.created_at.desc())
                    .limit(1)
                ).scalar_one()
            for row in pq.read_table(path).to_pylist():
                assert row["full_name"] == names[row["esi"]], "an export row pairs an ESI with another name"

    def names(self) -> dict[str, str]:
        with self.esse3.connect() as conn:
            return {
                compose_esi(SCOPE, p): f"{n} {c}"
                for p, n, c in conn.execute(text('SELECT "PERS_ID", "NOME", "COGNOME" FROM "P01_ANAPER"'))
            }

    def newest_export(self, year: int, kind: str | None = None) -> list[dict[str, Any]]:
        with self.state.connect() as conn:
            query = select(Export.parquet_path).where(
                Export.institution == INST, Export.academic_year == year, Export.status == "ready"
            )
            if kind:
                query = query.where(Export.kind == kind)
            path = conn.execute(query.order_by(Export.created_at.desc()).limit(1)).scalar_one()
        return pq.read_table(path).to_pylist()


@pytest.fixture
def world(
    emulator: Any,
    state_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Iterator[World]:
    home, esse3_url = demo_home(tmp_path, INST, seed=7, students=160, first_year=2024, last_year=2025,
                                now=GENERATED_AT)  # fmt: skip
    toml = demo_config_toml(emulator.url, atenei=DEMO_ATENEI[:1]).replace("first = 2019", "first = 2024")
    toml = toml.replace("last = 2025", 'last = 2025\n\n[esse3]\ntimezone = "Europe/Rome"\n')
    use_home(monkeypatch, home, toml, state_url)
    w = World(home, make_engine(state_url), make_engine(esse3_url), emulator, capsys)
    w.sync()
    w.assert_router_tells_the_truth()
    yield w
    w.state.dispose()
    w.esse3.dispose()


def test_late_commits_deletions_and_a_matricola_change_reach_the_router_and_the_feed(world: World) -> None:
    w = world
    settings = load_settings()
    token = create_token(
        w.state, name="vendor", scopes=["exports:read"], institutions=[INST], known_institutions=[INST]
    )
    api = TestClient(create_app(settings, w.state, feed_settle_seconds=0))
    headers = {"Authorization": f"Bearer {token.token}"}
    cursor = None
    while True:  # a vendor reads the whole feed and keeps its cursor
        params = {"university": INST, "limit": 1000, **({"cursor": cursor} if cursor else {})}
        page = api.get("/v1/feed", params=params, headers=headers).json()
        cursor = page["next_cursor"]
        if not page["has_more"]:
            break

    # A finalised career (person, career, badge) committed late: DATA_MOD 30 minutes before the
    # watermark, far outside the 10-minute overlap. The row count moved: the next sync finds it.
    late = w.watermark(2025) - dt.timedelta(minutes=30)
    w.esse3_do(
        'INSERT INTO "P01_ANAPER" ("PERS_ID", "COGNOME", "NOME", "EMAIL", "DATA_MOD") '
        "VALUES (900001, 'Tardi', 'Teresa', 'teresa.tardi@studenti.example.it', :t)",
        t=late,
    )
    cds = w.esse3_one('SELECT "CDS_ID" FROM "P06_CDS" WHERE "TIPO_CORSO_COD" = \'L2\' LIMIT 1')[0]
    w.esse3_do(
        'INSERT INTO "P01_STU" ("STU_ID", "PERS_ID", "MATRICOLA", "CDS_ID", "AA_ID", "DATA_IMM", '
        '"STA_STU_COD", "DATA_MOD") VALUES (900001, 900001, \'LATE-1\', :c, 2025, :d, \'A\', :t)',
        c=cds, d=dt.date(2025, 10, 1), t=late,
    )  # fmt: skip
    w.esse3_do(
        'INSERT INTO "P01_BADGE" ("BDG_ID", "STU_ID", "PERS_ID", "DATA_INI", "DATA_FIN", "ANN_FLG", "TIPO", '
        '"DATA_MOD") VALUES (900001, 900001, 900001, :a, :b, 0, \'V\', :t)',
        a=dt.date(2025, 10, 1), b=dt.date.today() + dt.timedelta(days=300), t=late,
    )  # fmt: skip
    out = w.sync()
    assert "running 1 partition(s)" in out
    persons, _ = w.router()
    assert persons[compose_esi(SCOPE, 900001)]["organisations"][0]["fullName"] == "Teresa Tardi"
    assert compose_esi(SCOPE, 900001) in w.valid_cards().values()
    w.assert_router_tells_the_truth()

    # A late *update* (the count does not move): a name changed under an old DATA_MOD. The sync sees
    # nothing; the sweep does: `reconcile` reports it (exit 9), `--repair` brings it in.
    renamed = w.registered_career(2025)
    w.esse3_do('UPDATE "P01_ANAPER" SET "NOME" = \'Rinominata\', "DATA_MOD" = :t WHERE "PERS_ID" = :p',
               t=late - dt.timedelta(days=2), p=renamed.pers_id)  # fmt: skip
    assert "running 0 partition(s)" in w.sync()
    code, out, _ = w.run("reconcile")
    assert code == ExitCode.DRIFT
    assert f"{INST}: 1 career(s) changed in Esse3 under an old DATA_MOD (run with --repair)" in out
    code, out, err = w.run("reconcile", "--repair")
    assert code == 0, out + err
    persons, _ = w.router()
    assert persons[compose_esi(SCOPE, renamed.pers_id)]["organisations"][0]["fullName"].startswith(
        "Rinominata "
    )
    code, out, _ = w.run("reconcile")
    assert code == 0 and f"{INST}: Esse3, the state DB and the Router agree" in out

    # A career deleted from Esse3 (with its badge, as Esse3 cascades), and a badge deleted alone.
    gone_career = w.registered_career(2025, skip=1)
    gone_badge = w.registered_career(2024)
    w.esse3_do('DELETE FROM "P01_BADGE" WHERE "STU_ID" = :s', s=gone_career.stu_id)
    w.esse3_do('DELETE FROM "P01_STU" WHERE "STU_ID" = :s', s=gone_career.stu_id)
    w.esse3_do('DELETE FROM "P01_BADGE" WHERE "BDG_ID" = :b', b=gone_badge.bdg_id)
    out = w.sync()
    assert "vanished 1 (cards deactivated)" in out
    valid = w.valid_cards()
    assert gone_career.escn not in valid and gone_badge.escn not in valid
    _, cards = w.router()
    assert cards[gone_career.escn]["cardStatusType"]["key"] == "INACTIVE"
    assert cards[gone_badge.escn]["cardStatusType"]["key"] == "INACTIVE"
    w.assert_router_tells_the_truth()
    exported = {r["escn"]: r["status"] for r in w.newest_export(2025)}  # an incremental one
    assert exported.get(gone_career.escn) == "INACTIVE"  # the export says so too

    # A matricola change (a fix in Esse3): the vendor polling with its cursor sees the card again.
    moved = w.registered_career(2025, skip=2)
    w.esse3_do('UPDATE "P01_STU" SET "MATRICOLA" = \'NEW-MAT-1\', "DATA_MOD" = :t WHERE "STU_ID" = :s',
               t=GENERATED_AT + dt.timedelta(minutes=5), s=moved.stu_id)  # fmt: skip
    w.sync()
    items = api.get(
        "/v1/feed", params={"university": INST, "cursor": cursor, "limit": 1000}, headers=headers
    ).json()
    seen = {i["escn"]: i for i in items["items"]}
    assert seen[moved.escn]["matricola"] == "NEW-MAT-1"
    assert seen[gone_career.escn]["status"] == "INACTIVE"
    assert all(i["matricola"] != moved.matricola for i in items["items"])


def test_the_guard_holds_a_mass_deletion_and_an_empty_view_never_deactivates(world: World) -> None:
    w = world
    with w.esse3.connect() as conn:
        careers = [r[0] for r in conn.execute(text('SELECT "STU_ID" FROM "P01_STU" WHERE "AA_ID" = 2025'))]
    valid_before = w.valid_cards()
    requests_before = w.emulator.stats()["requests"]

    # A view that returns nothing (a broken replica, a wrong schema): not one card deactivated.
    w.esse3_do('ALTER TABLE "P01_STU" RENAME TO "P01_STU_REAL"')
    w.esse3_do('CREATE VIEW "P01_STU" AS SELECT * FROM "P01_STU_REAL" WHERE 1 = 0')
    code, out, err = w.run("sync")
    assert code == ExitCode.DRIFT, out + err
    assert "Esse3 returns no careers row for the partition" in err and "nothing deactivated" in err
    assert w.emulator.stats()["requests"] == requests_before  # not one Router call
    assert w.valid_cards() == valid_before
    w.esse3_do('DROP VIEW "P01_STU"')
    w.esse3_do('ALTER TABLE "P01_STU_REAL" RENAME TO "P01_STU"')
    assert w.run("sync")[0] == 0  # the rows are back: nothing held, nothing deactivated
    assert w.valid_cards() == valid_before

    # 20 % of a partition deleted at once: held until a person confirms.
    doomed = careers[: len(careers) // 5]
    for stu_id in doomed:
        w.esse3_do('DELETE FROM "P01_STU" WHERE "STU_ID" = :s', s=stu_id)
    code, out, err = w.run("sync")
    assert code == ExitCode.DRIFT
    [line] = [ln for ln in err.splitlines() if "vanished at once" in ln]
    assert f"{len(doomed)} of {len(careers)} careers rows (20%) vanished at once (limit 5%)" in line
    assert w.valid_cards() == valid_before  # nothing deactivated
    code, out, _ = w.run("reconcile")
    assert code == ExitCode.DRIFT
    assert "held by the guard (confirm with --repair --confirm-vanished)" in out
    code, out, err = w.run("reconcile", "--repair", "--confirm-vanished")
    assert code == 0, out + err
    with w.state.connect() as conn:
        doomed_cards = set(conn.execute(select(Card.escn).where(Card.stu_id.in_(doomed))).scalars())
    assert doomed_cards and not doomed_cards & set(w.valid_cards())
    w.assert_router_tells_the_truth()
    code, out, _ = w.run("reconcile")
    assert code == 0, out


def test_a_person_merge_and_a_year_move_take_the_cards_along(world: World) -> None:
    w = world
    # Merge 1: the operator moved the career to another person and cleared CODICE_ESI.
    # Merge 2: the same, CODICE_ESI left as esc-sync wrote it.
    cleared, kept, operator = (
        w.registered_career(2025),
        w.registered_career(2025, skip=1),
        w.registered_career(2025, skip=2),
    )
    new_persons = {}
    for i, (career, esi_sql) in enumerate(((cleared, "NULL"), (kept, '"CODICE_ESI"'))):
        new = 910000 + i
        w.esse3_do(
            'INSERT INTO "P01_ANAPER" ("PERS_ID", "COGNOME", "NOME", "EMAIL", "DATA_MOD") '
            "VALUES (:p, 'Unita', :n, :e, :t)",
            p=new, n=f"Persona{i}", e=f"p{i}@studenti.example.it", t=GENERATED_AT,
        )  # fmt: skip
        w.esse3_do(
            f'UPDATE "P01_STU" SET "PERS_ID" = :p, "CODICE_ESI" = {esi_sql}, "DATA_MOD" = :t '
            'WHERE "STU_ID" = :s',
            p=new, t=GENERATED_AT + dt.timedelta(minutes=1), s=career.stu_id,
        )  # fmt: skip
        w.esse3_do('UPDATE "P01_BADGE" SET "PERS_ID" = :p WHERE "STU_ID" = :s', p=new, s=career.stu_id)
        new_persons[career.stu_id] = new
    # An operator set CODICE_ESI to an ESI esc-sync never wrote, and moved the career to a person.
    w.esse3_do(
        'UPDATE "P01_STU" SET "PERS_ID" = :p, "CODICE_ESI" = :esi, "DATA_MOD" = :t WHERE "STU_ID" = :s',
        p=910009, esi=compose_esi(SCOPE, 424242), t=GENERATED_AT + dt.timedelta(minutes=1), s=operator.stu_id,
    )  # fmt: skip
    w.esse3_do(
        'INSERT INTO "P01_ANAPER" ("PERS_ID", "COGNOME", "NOME", "DATA_MOD") '
        "VALUES (910009, 'Terzo', 'T', :t)",
        t=GENERATED_AT,
    )
    # A career moved to another academic year.
    year_move = w.registered_career(2024, skip=3)
    w.esse3_do('UPDATE "P01_STU" SET "AA_ID" = 2025, "DATA_MOD" = :t WHERE "STU_ID" = :s',
               t=GENERATED_AT + dt.timedelta(minutes=2), s=year_move.stu_id)  # fmt: skip
    out = w.sync()
    assert "retired 3 (changed person)" in out

    _, cards = w.router()
    for career in (cleared, kept, operator):
        old = cards[career.escn]
        assert old["cardStatusType"]["key"] == "INACTIVE"  # the old person's card, never moved
        assert old["person"]["identifier"] == compose_esi(SCOPE, career.pers_id)
    valid = w.valid_cards()
    for career in (cleared, kept):
        new_esi = compose_esi(SCOPE, new_persons[career.stu_id])
        assert list(valid.values()).count(new_esi) == 1  # a new card under the new person's ESI
        codice = w.esse3_one('SELECT "CODICE_ESI" FROM "P01_STU" WHERE "STU_ID" = :s', s=career.stu_id)[0]
        assert codice == new_esi
    assert compose_esi(SCOPE, 910009) not in valid.values()  # quarantined: no card
    codice = w.esse3_one('SELECT "CODICE_ESI" FROM "P01_STU" WHERE "STU_ID" = :s', s=operator.stu_id)[0]
    assert codice == compose_esi(SCOPE, 424242)  # an operator's ESI is never overwritten

    # The moved career's card is in 2025 only, and 2024's newest full export no longer has it.
    with w.state.connect() as conn:
        year = conn.execute(select(Card.academic_year).where(Card.escn == year_move.escn)).scalar_one()
    assert year == 2025
    assert year_move.escn not in {r["escn"] for r in w.newest_export(2024, "full")}
    assert year_move.escn in {r["escn"] for r in w.newest_export(2025)}  # an incremental one
    assert valid.get(year_move.escn) == compose_esi(SCOPE, year_move.pers_id)
    w.assert_router_tells_the_truth()
    w.assert_names_match_esis()
    # The badge API shows each badge with its own holder's name.
    settings = load_settings()
    token = create_token(
        w.state, name="app", scopes=["badges:read"], institutions=[INST], known_institutions=[INST]
    )
    api = TestClient(create_app(settings, w.state))
    for career in (cleared, kept):
        badge = api.get(f"/v1/universities/{INST}/students/{career.matricola}/badge.json",
                        headers={"Authorization": f"Bearer {token.token}"}).json()  # fmt: skip
        assert badge["esi"] == compose_esi(SCOPE, new_persons[career.stu_id])
        assert badge["full_name"].startswith("Persona")


def test_a_row_written_in_the_repeated_autumn_hour_is_read(world: World) -> None:
    """The watermark stands at 02:50 of the first pass of 2026-10-25 (Europe/Rome); an update written
    in the second pass, real time 02:35 CET, is stamped 02:30 — twenty minutes "before" it. No marker
    shows it (the newest DATA_MOD is still the watermark): while Esse3's clock is in the repeated hour
    the partition is read again, a whole repeat further back."""
    w = world
    career = w.registered_career(2025)
    w.esse3_do(
        'UPDATE "P01_ANAPER" SET "DATA_MOD" = :t WHERE "PERS_ID" = :p', t=GENERATED_AT, p=career.pers_id
    )
    w.sync()
    assert w.watermark(2025, "P01_ANAPER") == GENERATED_AT
    w.esse3_do('UPDATE "P01_ANAPER" SET "NOME" = \'Autunno\', "DATA_MOD" = :t WHERE "PERS_ID" = :p',
               t=dt.datetime(2026, 10, 25, 2, 30), p=career.pers_id)  # fmt: skip
    assert "running 0 partition(s)" in w.sync()  # today's clock: no marker moved
    rome = ZoneInfo("Europe/Rome")
    second_pass = dt.datetime(2026, 10, 25, 2, 35, tzinfo=rome, fold=1)
    after = dt.datetime(2026, 10, 25, 3, 20, tzinfo=rome)
    settings = load_settings()
    runtime = Runtime(settings)
    try:
        assert [c.partition for c in pending_partitions(settings, runtime, instant=after)] == []
        todo = [c.partition for c in pending_partitions(settings, runtime, instant=second_pass)]
        assert todo == [Partition(2025, INST)]
        backfill = run_partitions(
            build_definitions(settings, runtime), ensure_instance(settings), todo, lock_engine=runtime.engine
        )
    finally:
        runtime.dispose()
    assert not backfill.failures
    persons, _ = w.router()
    assert persons[compose_esi(SCOPE, career.pers_id)]["organisations"][0]["fullName"].startswith("Autunno ")
