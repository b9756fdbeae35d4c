"""Personal data has an end (issue 23): retention at its boundary, consent withdrawn, erasure on
request, DELETEs whose answers are lost, a run stopped between the card and the person deletes, the
name gone from the state DB, the home's files and the newest export, and a new enrolment registering
the person again. On SQLite and PostgreSQL, the Router emulator over HTTP."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from sqlalchemy import select, text

from etl.config import Settings, load_settings
from etl.demo.config import DEMO_ATENEI, demo_config_toml, key_env
from etl.domain.retention import CardFacts, EraseReason, RetentionPolicy, card_ended_on, erase_reason
from etl.domain.states import CardStatus, ExportKind, ExportStatus
from etl.emulator import FaultConfig
from etl.erasure import apply_retention, erase_on_request
from etl.errors import ConfigError
from etl.resources.router import RouterClient
from etl.resources.router_errors import RouterNotFound
from etl.resources.runtime import Runtime
from etl.store.db import make_engine
from etl.store.models import Card, Career, Export, Person, QrImage
from tests.fixtures.world import KEYS, PICS, CliWorld, add_badge, add_career, demo_home, use_home

INST = "unipa"  # opt-in: consent can be withdrawn
GENERATED_AT = dt.datetime(2026, 10, 1, 9, 0)
MARK_FIRST, MARK_LAST = "Erasmina", "Zyxwvuqtroppo"  # a name no generated student has
POLICY = RetentionPolicy()

# --- the rules, pure ---------------------------------------------------------------------------------

DAY = dt.date(2026, 3, 1)


def _card(status: CardStatus, expires: dt.date, changed: dt.date = DAY) -> CardFacts:
    return CardFacts(status, expires, dt.datetime.combine(changed, dt.time(12)))


def test_retention_starts_the_day_the_last_card_ended_plus_the_policy() -> None:
    inactive = _card(CardStatus.INACTIVE, dt.date(2027, 1, 1))
    boundary = DAY + dt.timedelta(days=365)
    assert erase_reason([inactive], False, boundary - dt.timedelta(days=1), POLICY) is None
    assert erase_reason([inactive], False, boundary, POLICY) is EraseReason.RETENTION
    expired = _card(CardStatus.ACTIVE, DAY, changed=dt.date(2025, 1, 1))
    assert card_ended_on(expired, DAY) is None  # valid through its last day
    assert erase_reason([expired], False, boundary - dt.timedelta(days=1), POLICY) is None
    assert erase_reason([expired], False, boundary, POLICY) is EraseReason.RETENTION
    valid = _card(CardStatus.ACTIVE, dt.date(2030, 1, 1))
    assert erase_reason([inactive, valid], False, boundary, POLICY) is None  # one valid card keeps them
    assert erase_reason([], False, boundary, POLICY) is None


def test_consent_withdrawn_erases_after_its_own_delay() -> None:
    inactive = _card(CardStatus.INACTIVE, dt.date(2027, 1, 1))
    assert erase_reason([inactive], True, DAY, POLICY) is EraseReason.CONSENT  # default 0 days
    week = RetentionPolicy(consent_withdrawn_days=7)
    assert erase_reason([inactive], True, DAY + dt.timedelta(days=6), week) is None
    assert erase_reason([inactive], True, DAY + dt.timedelta(days=7), week) is EraseReason.CONSENT


def test_the_retention_section_is_validated() -> None:
    assert RetentionPolicy.from_mapping({}) == RetentionPolicy(365, 0, 400)
    for bad in ({"router_person_days": -1}, {"audit_days": "400"}, {"consent_withdrawn_days": True}):
        with pytest.raises(ConfigError, match=f"retention: field {next(iter(bad))}"):
            RetentionPolicy.from_mapping(bad)


# --- end to end ------------------------------------------------------------------------------------


class World(CliWorld):
    @property
    def settings(self) -> Settings:
        return load_settings()

    def marked(self) -> int:
        """The PERS_ID of the student renamed to the marker, registered with an ACTIVE card."""
        with self.state.connect() as conn:
            return conn.execute(select(Career.pers_id).where(Career.last_name == MARK_LAST)).scalars().first()

    def set_consent(self, pers_id: int, flag: str | None) -> None:
        """The person's ESC consent in Esse3 (S, N or none), changed now."""
        with self.esse3.begin() as conn:
            conn.execute(
                text('UPDATE "P01_ANAPER" SET "CONSENSO_ESC" = :f, "DATA_MOD" = :t WHERE "PERS_ID" = :p'),
                {"f": flag, "t": dt.datetime.now(), "p": pers_id},
            )

    def router_has(self, esi: str | None = None, escn: str | None = None) -> bool:
        async def ask() -> bool:
            async with RouterClient(
                base_url=self.emulator.url, api_key=KEYS[INST], institution=INST, pic=PICS[INST],
                api_key_env=key_env(INST),
            ) as client:  # fmt: skip
                try:
                    await (client.get_person(esi) if esi else client.get_card(escn or ""))
                    return True
                except RouterNotFound:
                    return False

        return asyncio.run(ask())

    def person(self, pers_id: int) -> Any:
        with self.state.connect() as conn:
            return conn.execute(select(Person.__table__).where(Person.pers_id == pers_id)).one()

    def cards(self, esi: str) -> list[Any]:
        with self.state.connect() as conn:
            return list(conn.execute(select(Card.__table__).where(Card.esi == esi)))

    def erase(self, pers_id: int, **kw: Any) -> tuple[list[str], Any]:
        rt = Runtime(self.settings)
        try:
            return erase_on_request(
                rt.engine, rt.settings, partial(rt.router_client, INST), INST, pers_id, **kw
            )
        finally:
            rt.dispose()

    def retention(self, today: dt.date) -> Any:
        rt = Runtime(self.settings)
        try:
            factory = lambda a: partial(rt.router_client, a.code)  # noqa: E731
            return apply_retention(rt.engine, rt.settings, factory, today)[INST]
        finally:
            rt.dispose()

    def name_anywhere(self) -> list[str]:
        """Where the marker name still is: state DB (its bytes on SQLite, its rows on PostgreSQL) and
        every file in the home but the university's own Esse3."""
        found = []
        needle = MARK_LAST.encode()
        if self.state.dialect.name == "sqlite":
            db = Path(self.state.url.database or "")
            found += [str(p) for p in db.parent.glob(db.name + "*") if needle in p.read_bytes()]
        else:
            with self.state.connect() as conn:
                if conn.execute(select(Career.stu_id).where(Career.last_name == MARK_LAST)).first():
                    found.append("careers")
        for p in self.home.rglob("*"):
            if p.is_file() and not p.name.startswith("esse3-") and needle in p.read_bytes():
                found.append(str(p))
        return found


@pytest.fixture
def world(
    emulator: Any,
    state_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Iterator[World]:
    home, esse3_url = demo_home(tmp_path, INST, seed=11, students=60, first_year=2025, last_year=2025,
                                now=GENERATED_AT)  # fmt: skip
    esse3 = make_engine(esse3_url)
    with esse3.begin() as conn:  # one consenting student with an active badge gets the marker name
        pers_id = conn.execute(
            text(
                'SELECT s."PERS_ID" FROM "P01_STU" s JOIN "P01_ANAPER" p ON p."PERS_ID" = s."PERS_ID" '
                'JOIN "P01_BADGE" b ON b."STU_ID" = s."STU_ID" WHERE p."CONSENSO_ESC" = \'S\' '
                'AND s."STA_STU_COD" = \'A\' AND s."DATA_IMM" IS NOT NULL AND b."ANN_FLG" = 0 '
                'AND b."DATA_FIN" > :today ORDER BY s."PERS_ID" LIMIT 1'
            ),
            {"today": dt.date.today()},
        ).scalar_one()
        conn.execute(
            text('UPDATE "P01_ANAPER" SET "NOME" = :n, "COGNOME" = :c WHERE "PERS_ID" = :p'),
            {"n": MARK_FIRST, "c": MARK_LAST, "p": pers_id},
        )
    toml = demo_config_toml(emulator.url, atenei=DEMO_ATENEI[1:]).replace("first = 2019", "first = 2025")
    use_home(monkeypatch, home, toml, state_url)
    w = World(home, make_engine(state_url), esse3, emulator, capsys)
    w.sync()
    yield w
    w.state.dispose()
    w.esse3.dispose()


pytestmark = pytest.mark.slow


def test_erase_on_request_leaves_no_name_behind_and_a_new_enrolment_registers_again(world: World) -> None:
    pers_id = world.marked()
    person = world.person(pers_id)
    escns = [c.escn for c in world.cards(person.esi)]
    assert escns and world.router_has(esi=person.esi) and world.name_anywhere()

    code, out, _ = world.run("erase", "--institution", INST, "--pers-id", str(pers_id), "--dry-run")
    assert code == 0 and "would erase" in out and f"{len(escns)} card(s)" in out, out
    assert world.router_has(esi=person.esi) and world.person(pers_id).erase_requested_at is None

    code, out, err = world.run("erase", "--institution", INST, "--pers-id", str(pers_id))
    assert code == 0 and out.startswith(f"erased person {pers_id} of {INST}"), out + err
    assert MARK_LAST not in out + err
    assert not world.router_has(esi=person.esi)
    assert not any(world.router_has(escn=e) for e in escns)
    erased = world.person(pers_id)
    assert erased.erased_at is not None and erased.esi == person.esi  # the key stays
    assert all(c.deleted_at is not None for c in world.cards(person.esi))
    with world.state.connect() as conn:
        assert conn.execute(select(QrImage.escn).where(QrImage.escn.in_(escns))).all() == []
        assert conn.execute(select(Export.id).where(Export.status == ExportStatus.READY)).all() == []
    world.sync()  # the exports marked for rebuild are written again, the old files deleted
    assert world.name_anywhere() == []
    with world.state.connect() as conn:
        newest = (
            conn.execute(
                select(Export.parquet_path)
                .where(Export.kind == ExportKind.FULL, Export.status == ExportStatus.READY)
                .order_by(Export.created_at.desc())
            )
            .scalars()
            .first()
        )
    rows = pq.read_table(newest).to_pylist()
    assert rows and all(r["esi"] != person.esi for r in rows)
    assert not world.router_has(esi=person.esi)  # the next runs never register them again

    again, out, _ = world.run("erase", "--institution", INST, "--pers-id", str(pers_id))
    assert again == 0 and "nothing held" in out  # idempotent

    # A new enrolment: a new career and badge of the same person.
    now = dt.datetime.now().replace(microsecond=0)
    add_career(world.esse3, 990_001, pers_id, 2025, now, matricola="NEW001")
    add_badge(world.esse3, 990_001, 990_001, pers_id, now, valid_to=dt.date.today() + dt.timedelta(days=300))
    world.sync()
    assert world.router_has(esi=person.esi)
    assert world.person(pers_id).erased_at is None
    new_cards = [c for c in world.cards(person.esi) if c.deleted_at is None]
    assert [c.bdg_id for c in new_cards] == [990_001] and world.router_has(escn=new_cards[0].escn)


def test_consent_withdrawn_is_erased_at_the_next_run(world: World) -> None:
    pers_id = world.marked()
    esi = world.person(pers_id).esi
    world.set_consent(pers_id, "N")
    world.sync()  # cards INACTIVE at once, as before
    assert all(c.desired_status == CardStatus.INACTIVE for c in world.cards(esi))
    report = world.retention(dt.date.today())
    assert report.erased == 1 and not world.router_has(esi=esi)
    assert world.person(pers_id).erase_reason == EraseReason.CONSENT


def test_retention_on_the_day_before_and_on_its_boundary(world: World) -> None:
    pers_id = world.marked()
    esi = world.person(pers_id).esi
    with world.esse3.begin() as conn:  # the badges are annulled: the cards go INACTIVE
        conn.execute(
            text('UPDATE "P01_BADGE" SET "ANN_FLG" = 1, "DATA_MOD" = :t WHERE "PERS_ID" = :p'),
            {"t": dt.datetime.now(), "p": pers_id},
        )
    world.sync()
    cards = world.cards(esi)
    assert cards and all(c.desired_status == CardStatus.INACTIVE for c in cards), cards
    ended = max(c.changed_at.date() for c in cards)
    assert world.retention(ended + dt.timedelta(days=364)).erased == 0
    assert world.router_has(esi=esi)
    assert world.retention(ended + dt.timedelta(days=365)).erased == 1
    assert not world.router_has(esi=esi)


def test_lost_delete_answers_and_a_run_stopped_between_card_and_person_converge(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    pers_id = world.marked()
    esi = world.person(pers_id).esi
    escns = [c.escn for c in world.cards(esi)]
    # A run stopped after the cards' DELETEs, before the person's.
    real = RouterClient.delete_person

    async def killed(self: RouterClient, esi: str) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(RouterClient, "delete_person", killed)
    with pytest.raises(KeyboardInterrupt):
        world.erase(pers_id)
    monkeypatch.setattr(RouterClient, "delete_person", real)
    assert world.person(pers_id).erase_requested_at is not None and world.person(pers_id).erased_at is None
    assert world.router_has(esi=esi)
    # ... the Router then loses 30 % of the answers, after committing each DELETE.
    world.emulator.set_faults(FaultConfig(fail_rate=0.3, post_commit_share=1.0, retry_after_s=0, seed=3))
    world.sync()  # runs in between leave the person alone (their erasure is under way)
    for _ in range(5):
        if world.person(pers_id).erased_at is not None:
            break
        world.retention(dt.date.today())  # finishes the unfinished erasure, whatever the policy says
    world.emulator.set_faults(FaultConfig())
    assert world.person(pers_id).erased_at is not None
    assert not world.router_has(esi=esi) and not any(world.router_has(escn=e) for e in escns)


def test_old_audit_rows_are_deleted(world: World) -> None:
    from etl.store.models import ApiAudit

    old = dt.datetime.now() - dt.timedelta(days=401)
    with world.state.begin() as conn:
        conn.execute(
            ApiAudit.__table__.insert(),
            [{"token_id": 1, "at": at, "action": "x", "resource": "/v1/health", "status": 200, "bytes": 0}
             for at in (old, dt.datetime.now())],
        )  # fmt: skip
    world.retention(dt.date.today())
    with world.state.connect() as conn:
        assert len(conn.execute(select(ApiAudit.id)).all()) == 1


def test_the_settings_carry_the_retention_section(tmp_path: Path) -> None:
    from tests.fixtures.world import demo_settings

    settings = demo_settings(tmp_path, "sqlite://", retention={"router_person_days": 30})
    assert settings.retention == replace(RetentionPolicy(), router_person_days=30)
    with pytest.raises(ConfigError, match="retention: unknown key"):
        demo_settings(tmp_path, "sqlite://", retention={"days": 30})


def test_reconcile_reports_an_erased_person_the_router_holds_and_repair_deletes_it(world: World) -> None:
    from etl.domain.router_bodies import person_body

    pers_id = world.marked()
    esi = world.person(pers_id).esi
    code, out, _ = world.run("erase", "--institution", INST, "--pers-id", str(pers_id))
    assert code == 0, out

    async def put_back() -> None:  # as a lost DELETE, or someone at the Router's portal, would
        async with RouterClient(
            base_url=world.emulator.url, api_key=KEYS[INST], institution=INST, pic=PICS[INST],
            api_key_env=key_env(INST),
        ) as client:  # fmt: skip
            await client.create_person(person_body(esi, PICS[INST], "Someone Else", None, "BACHELOR"))

    asyncio.run(put_back())
    code, out, _ = world.run("reconcile")
    assert code == 9 and "1 erased person(s) or card(s) still at the Router (run with --repair)" in out, out
    code, out, _ = world.run("reconcile", "--repair")
    assert "deleted again" in out and not world.router_has(esi=esi), out
    code, out, _ = world.run("reconcile")
    assert "erased" not in out, out


def test_the_nightly_retention_job_erases_in_a_deployment(world: World) -> None:
    """The Dagster job the deployment's schedule runs, in-process: same erasure, counts in its log."""
    from dagster import DagsterInstance

    from etl.assets.retention_job import RETENTION_JOB
    from etl.definitions import build_definitions

    pers_id = world.marked()
    esi = world.person(pers_id).esi
    world.set_consent(pers_id, None)
    world.sync()
    rt = Runtime(world.settings)
    try:
        defs = build_definitions(rt.settings, rt)
        schedules = {s.name for s in defs.schedules or ()}
        assert "nightly_retention" in schedules
        with DagsterInstance.ephemeral() as instance:
            result = defs.resolve_job_def(RETENTION_JOB).execute_in_process(instance=instance)
            assert result.success
            logs = [e.user_message for e in instance.all_logs(result.run_id)]
    finally:
        rt.dispose()
    assert not world.router_has(esi=esi) and world.person(pers_id).erased_at is not None
    assert any(f"{INST}: 1 person(s) erased" in m for m in logs), logs
    assert not any(MARK_LAST in m for m in logs)


def test_erase_with_esse3_takes_back_what_esc_sync_wrote_there(world: World) -> None:
    pers_id = world.marked()
    esi = world.person(pers_id).esi

    def on_careers() -> set[str | None]:
        with world.esse3.connect() as conn:
            rows = conn.execute(
                text('SELECT "CODICE_ESI" FROM "P01_STU" WHERE "PERS_ID" = :p'), {"p": pers_id}
            )
            return {r[0] for r in rows}

    assert on_careers() == {esi}  # written back by the runs
    code, out, _ = world.run("erase", "--institution", INST, "--pers-id", str(pers_id))
    assert code == 0 and "left in Esse3: CODICE_ESI on 1 career(s)" in out, out
    assert on_careers() == {esi}  # Esse3 is the university's: untouched without --esse3
    code, out, _ = world.run("erase", "--institution", INST, "--pers-id", str(pers_id), "--esse3")
    assert code == 0 and "taken back from Esse3: CODICE_ESI on 1 career(s)" in out, out
    assert on_careers() == {None}
    world.sync()  # the sweep reads the career back: still erased, never registered again
    assert not world.router_has(esi=esi) and world.name_anywhere() == []


def test_consent_given_again_registers_the_person_as_new(world: World) -> None:
    pers_id = world.marked()
    esi = world.person(pers_id).esi
    old = {c.escn for c in world.cards(esi)}

    world.set_consent(pers_id, "N")
    world.sync()
    assert world.retention(dt.date.today()).erased == 1 and not world.router_has(esi=esi)
    world.sync()
    assert not world.router_has(esi=esi)  # withdrawn consent stays withdrawn
    world.set_consent(pers_id, "S")
    world.sync()
    assert world.router_has(esi=esi) and world.person(pers_id).erased_at is None
    live = [c for c in world.cards(esi) if c.deleted_at is None]
    assert live and {c.escn for c in live}.isdisjoint(old)  # new card numbers: the old ones are deleted
    assert all(world.router_has(escn=c.escn) for c in live)
    with world.state.connect() as conn:
        assert conn.execute(select(Career.last_name).where(Career.pers_id == pers_id)).scalars().all() == [
            MARK_LAST
        ]
