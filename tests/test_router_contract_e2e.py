"""The client against the Router's own OpenAPI document, end to end (issue 10, contract tests b, c).

b. A full demo backfill (both demo universities, every academic year, through Dagster) talks to the
   emulator through ``ContractProxy``: every request the client sends and every answer it reads is
   checked against the document's schemas as it passes.
c. The same backfill against an emulator that loses 30% of its answers after committing the change
   (``--fail-rate 0.3 --fault-kinds 502,drop --post-commit-share 1``) converges: every card the Router
   holds is registered locally with the same status and expiry, nothing is quarantined because of the
   Router, every registered card has its QR, and no person or card is there twice.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from sqlalchemy import select

from etl.config import Settings
from etl.definitions import build_definitions
from etl.demo import config as demo
from etl.demo.generate import generate
from etl.emulator import EmulatorProcess, FaultConfig, start_emulator
from etl.orchestrate import run_partitions
from etl.partitions import Partition
from etl.resources.runtime import Runtime
from etl.store.migrate import upgrade
from etl.store.models import Card, QrImage, Quarantine
from tests.fixtures.world import demo_settings
from tests.router_contract import ContractProxy

pytestmark = pytest.mark.slow  # end to end, seconds to minutes each: `make test-quick` leaves them out

STUDENTS = 350  # per university, over every demo academic year
NOW = dt.datetime.now().replace(microsecond=0)  # card expiries follow today


@dataclass
class World:
    settings: Settings
    emulator: EmulatorProcess
    home: Path

    def backfill(self, router_url: str) -> None:
        settings = replace(self.settings, router=replace(self.settings.router, url=router_url))
        runtime = Runtime(settings)
        try:
            from dagster import DagsterInstance

            partitions = [Partition(y, a.code) for a in settings.atenei for y in settings.academic_years]
            run_partitions(build_definitions(settings, runtime), DagsterInstance.ephemeral(), partitions)
        finally:
            runtime.dispose()


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    for a in demo.DEMO_ATENEI:
        generate(
            f"sqlite:///{tmp_path / f'esse3-{a.code}.sqlite'}", seed=a.seed, students=STUDENTS,
            first_year=demo.FIRST_YEAR, last_year=demo.LAST_YEAR, now=NOW,
            matricola_base=a.matricola_base, email_domain=f"studenti.{a.domain}",
        )  # fmt: skip
    settings = demo_settings(tmp_path, f"sqlite:///{tmp_path / 'state.sqlite'}")
    keys = {}
    for a in settings.atenei:
        monkeypatch.setenv(a.router_api_key_env, f"contract-{a.code}")
        keys[f"contract-{a.code}"] = a.pic
    runtime = Runtime(settings)
    upgrade(runtime.engine)
    runtime.dispose()
    with start_emulator(keys, tmp_path / "router.sqlite") as emu:
        yield World(settings, emu, tmp_path)


def test_every_request_and_answer_of_a_demo_backfill_follows_the_document(world: World) -> None:
    with ContractProxy(world.emulator.url) as proxy:
        world.backfill(proxy.url)
    assert proxy.calls["POST /api/v2/persons"] > 100 and proxy.calls["POST /api/v2/cards"] > 100
    assert not proxy.problems, dict(proxy.problems)
    assert "GET ?" not in proxy.calls  # every call the client made is an operation of the document


def router_cards(world: World) -> dict[str, tuple[str, str, str]]:
    """What the Router (the emulator's own state) holds: ESCN -> (PIC, stored status, expiry)."""
    with sqlite3.connect(world.home / "router.sqlite") as db:
        rows = db.execute("SELECT card_number, pic, status, expires_at FROM cards WHERE deleted = 0")
        return {n: (pic, status, expires) for n, pic, status, expires in rows}


def router_duplicates(world: World) -> tuple[int, int]:
    with sqlite3.connect(world.home / "router.sqlite") as db:
        persons = db.execute(
            "SELECT COUNT(*) FROM (SELECT 1 FROM persons GROUP BY esi_key HAVING COUNT(*) > 1)"
        ).fetchone()[0]
        # one card per badge: the same person never holds two ACTIVE cards of one type at once
        cards = db.execute(
            "SELECT COUNT(*) FROM (SELECT 1 FROM cards WHERE deleted = 0 AND status = 'ACTIVE'"
            " GROUP BY pic, person_id, card_type, issued_at HAVING COUNT(*) > 1)"
        ).fetchone()[0]
    return persons, cards


def test_a_backfill_losing_30_percent_of_answers_after_commit_converges(world: World) -> None:
    world.emulator.set_faults(
        FaultConfig(fail_rate=0.3, fault_kinds={"502": 1, "drop": 1}, post_commit_share=1.0, seed=7)
    )
    world.backfill(world.emulator.url)
    world.backfill(world.emulator.url)  # a plain rerun finishes what ran out of retries
    stats = world.emulator.stats()
    assert stats["faults"].get("post_commit", 0) > 100  # the answers really were lost after commit

    engine = Runtime(world.settings).engine
    with engine.connect() as conn:
        local = {
            c.escn: c
            for c in conn.execute(select(Card.escn, Card.state, Card.router_status, Card.expires_at))
        }
        router_reasons = conn.execute(
            select(Quarantine.reason).where(
                Quarantine.resolved_at.is_(None), Quarantine.reason.like("%Router%")
            )
        ).scalars().all()  # fmt: skip
        with_qr = set(conn.execute(select(QrImage.escn)).scalars())
    remote = router_cards(world)
    assert len(remote) > 120
    for escn, (_pic, status, expires) in remote.items():
        mine = local.get(escn)
        assert mine is not None and mine.state == "registered", (escn, mine)
        assert (mine.router_status, mine.expires_at.isoformat()) == (status, expires)
    registered = {e for e, c in local.items() if c.state == "registered"}
    assert registered == set(remote)
    assert router_reasons == []
    assert registered <= with_qr
    assert router_duplicates(world) == (0, 0)
