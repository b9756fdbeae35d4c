"""`esc-sync reconcile` against the emulator (issue 13), state on SQLite and PostgreSQL: the Router is
tampered with behind esc-sync's back (a card deleted, a card's status changed, a card registered by
someone else), reconcile reports each kind in one line with exit 9, `--repair` repairs what has a
rule and runs the partitions that carry it out, and afterwards only the foreign card is reported."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from etl.domain.router_bodies import card_body, card_update_body, person_body
from etl.emulator import start_emulator
from etl.errors import ExitCode
from etl.store.db import make_engine
from etl.store.migrate import upgrade
from etl.store.models import Card
from tests.test_router_reliability import (
    INST,
    KEY,
    PIC,
    REPO,
    client_factory,
    local_state,
    make_esse3,
    sync_env,
    write_config,
)

pytestmark = pytest.mark.slow  # end to end, seconds to minutes each: `make test-quick` leaves them out


def esc_sync(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "etl.cli", *args], env=env, cwd=REPO, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_reconcile_reports_then_repairs_drift_made_behind_our_back(tmp_path: Path, state_url: str) -> None:
    home = tmp_path / "home"
    make_esse3(home, students=300)
    engine = make_engine(state_url)
    upgrade(engine)
    with start_emulator({KEY: PIC}) as emu:
        write_config(home, emu.url)
        env = sync_env(home, state_url)
        first = esc_sync(env, "materialize", "--partition", f"2025|{INST}")
        assert first.returncode == 0, first.stderr
        clean = esc_sync(env, "reconcile", "--institution", INST)
        assert clean.returncode == 0, clean.stdout + clean.stderr
        assert f"{INST}: Esse3, the state DB and the Router agree" in clean.stdout

        with engine.connect() as conn:
            cards = conn.execute(
                select(Card.escn, Card.esi, Card.card_type, Card.issued_at, Card.expires_at)
                .where(Card.institution == INST, Card.state == "registered", Card.router_status == "ACTIVE")
                .order_by(Card.escn)
                .limit(2)
            ).all()
        deleted, changed = cards

        async def tamper() -> None:
            async with client_factory(emu.url)() as client:
                await client.delete_card(deleted.escn)
                body = card_body(
                    changed.escn, changed.esi, PIC, changed.card_type, "INACTIVE", changed.issued_at,
                    changed.expires_at,
                )  # fmt: skip
                await client.update_card(changed.escn, card_update_body(body))
                # a card someone else registered for our PIC, on one of our persons
                [number] = await client.generate_escn(1)
                foreign = card_body(
                    number, changed.esi, PIC, "PASSIVE", "ACTIVE", dt.date.today(),
                    dt.date.today() + dt.timedelta(days=365),
                )  # fmt: skip
                await client.create_card(foreign)

        asyncio.run(tamper())
        before = local_state(engine)

        report = esc_sync(env, "reconcile", "--institution", INST)
        assert report.returncode == ExitCode.DRIFT, report.stderr
        [line] = [ln for ln in report.stdout.splitlines() if ln.startswith(f"{INST}:")]
        assert "1 card(s) registered here, absent at the Router (run with --repair)" in line
        assert "1 card(s) with another status or expiry at the Router (run with --repair)" in line
        assert "1 card(s) at the Router unknown here (reported)" in line
        assert local_state(engine) == before  # a report changes nothing

        repair = esc_sync(env, "reconcile", "--institution", INST, "--repair")
        assert "registered again" in repair.stdout and "updated" in repair.stdout
        assert "running 1 partition(s)" in repair.stdout
        # still exit 9: the foreign card has no rule to repair it
        assert repair.returncode == ExitCode.DRIFT, repair.stdout + repair.stderr

        after = esc_sync(env, "reconcile", "--institution", INST)
        [line] = [ln for ln in after.stdout.splitlines() if ln.startswith(f"{INST}:")]
        assert line == f"{INST}: 1 card(s) at the Router unknown here (reported)"
        assert after.returncode == ExitCode.DRIFT

        async def router_card(escn: str) -> dict:  # type: ignore[type-arg]
            async with client_factory(emu.url)() as client:
                return await client.get_card(escn)

        assert asyncio.run(router_card(changed.escn))["cardStatusType"]["key"] == "ACTIVE"  # put back
        with engine.connect() as conn:  # the deleted number is burnt: the badge got a new card
            replaced = conn.execute(
                select(Card.escn, Card.state).where(Card.institution == INST, Card.esi == deleted.esi)
            ).all()
        assert deleted.escn not in {r.escn for r in replaced if r.state == "registered"}
        assert any(r.state == "registered" for r in replaced)
    engine.dispose()


def test_the_asset_check_reports_drift_in_counts_and_repairs_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dagster import DagsterInstance

    from etl.definitions import RECONCILE_JOB, build_definitions
    from etl.resources.runtime import Runtime
    from tests.test_router_reliability import KEY_ENV, settings_for

    url = f"sqlite:///{tmp_path / 'state.sqlite'}"
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    monkeypatch.setenv(KEY_ENV, KEY)
    with start_emulator({KEY: PIC}) as emu:
        settings = settings_for(tmp_path, url, emu.url)
        settings = dataclasses.replace(settings, atenei=(settings.ateneo(INST),))

        async def foreign_person_and_card() -> None:
            async with client_factory(emu.url)() as client:
                esi = "urn:schac:personalUniqueCode:int:esi:unife.it:999999"
                await client.create_person(person_body(esi, PIC, "Nome Cognome", "n@example.org", "BACHELOR"))
                [number] = await client.generate_escn(1)
                today = dt.date.today()
                await client.create_card(
                    card_body(number, esi, PIC, "PASSIVE", "ACTIVE", today, today + dt.timedelta(days=30))
                )

        asyncio.run(foreign_person_and_card())
        runtime = Runtime(settings)
        with DagsterInstance.ephemeral() as instance:
            result = (
                build_definitions(settings, runtime)
                .resolve_job_def(RECONCILE_JOB)
                .execute_in_process(instance=instance)
            )
        runtime.dispose()
    [evaluation] = [e for e in result.get_asset_check_evaluations() if e.check_name == "router_matches_local"]
    assert evaluation.passed is False
    metadata = {k: v.value for k, v in evaluation.metadata.items()}
    assert metadata[f"{INST}/unknown_cards"] == 1 and metadata[f"{INST}/missing_cards"] == 0
    assert metadata["universities_with_drift"] == INST
    assert not any("Nome" in str(v) or "999999" in str(v) for v in metadata.values())
