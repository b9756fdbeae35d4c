"""ESI and card registration against the Router emulator over real HTTP: the chain, write-back,
idempotence, lifecycle pushes, 409 adoption/reconciliation and consent."""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import select, text, update

from etl.assets.badges import ingest_badges
from etl.assets.cards import sync_cards
from etl.assets.careers import ingest_careers
from etl.assets.esi import assign_esis
from etl.assets.router_calls import CallReport
from etl.demo.generate import generate
from etl.demo.schema import P01_ANAPER, P01_BADGE, P01_STU
from etl.domain.card_plan import CardWork, plan_cards
from etl.domain.escn import EscnMinter
from etl.domain.esi import compose_esi
from etl.domain.router_bodies import person_body
from etl.partitions import Partition
from etl.resources.runtime import Runtime
from etl.store import cards as card_store
from etl.store import persons as router_persons
from etl.store.migrate import upgrade
from etl.store.models import Card, Person, Quarantine
from tests.fixtures.world import NOW, demo_settings

TODAY = NOW.date()
YEAR = 2025


@pytest.fixture
def rt(emulator, state_url: str, tmp_path: Path):
    for seed, code in ((3, "unife"), (4, "unipa")):
        generate(
            f"sqlite:///{tmp_path / f'esse3-{code}.sqlite'}",
            seed=seed,
            students=250,
            first_year=2024,
            last_year=YEAR,
            now=NOW,
        )
    settings = demo_settings(tmp_path, state_url, academic_years={"first": 2024, "last": YEAR})
    settings = replace(settings, router=replace(settings.router, url=emulator.url))
    runtime = Runtime(settings)
    upgrade(runtime.engine)
    yield runtime
    runtime.dispose()


def sync(rt: Runtime, code: str = "unife", year: int = YEAR, today: dt.date = TODAY) -> CallReport:
    """The asset chain of one partition, as the job runs it."""
    ateneo, p, report = rt.settings.ateneo(code), Partition(year, code), CallReport()
    ingest_careers(rt.engine, rt.esse3(code), ateneo, p, today=today)
    assign_esis(rt.engine, rt.esse3(code), lambda: rt.router_client(code), ateneo, p, report)
    ingest_badges(rt.engine, rt.esse3(code), p)
    sync_cards(rt.engine, lambda: rt.router_client(code), ateneo, p, report, today=today)
    return report


async def _router_cards(rt: Runtime, code: str) -> dict[str, dict]:
    async with rt.router_client(code) as c:
        # Lists hold CardLiteViews (no status): read each full CardView.
        return {card["cardNumber"]: await c.get_card(card["cardNumber"]) async for card in c.iter_cards()}


def router_cards(rt: Runtime, code: str = "unife") -> dict[str, dict]:
    return asyncio.run(_router_cards(rt, code))


def local_cards(rt: Runtime) -> dict[str, Card]:
    with rt.engine.connect() as conn:
        return {c.escn: c for c in conn.execute(select(Card)).all()}


def test_chain_registers_writes_back_and_is_idempotent(rt: Runtime, emulator) -> None:
    report = sync(rt)
    assert report.counts["registered"] > 0 and report.counts["failed"] == 0
    counts = emulator.stats()["organisations"]["999978433"]
    with rt.engine.connect() as conn:
        totals = card_store.registered_totals(conn, "unife")
        persons = conn.execute(select(Person.esi, Person.pers_id).where(Person.state == "registered")).all()
    assert (counts["persons"], counts["cards"]) == (totals["persons"], totals["cards"]) and totals[
        "cards"
    ] > 0
    # Local cards are exactly the Router's, with the same status and expiry.
    remote, local = router_cards(rt), local_cards(rt)
    assert set(remote) == {k for k, c in local.items() if c.state == "registered"}
    for escn, card in remote.items():
        assert card["cardStatusType"]["key"] == local[escn].router_status
        assert card["expiresAt"] == local[escn].expires_at.isoformat()
        assert card["cardType"]["key"] in ("PASSIVE", "SMART_PASSIVE")
    # The ESI is stored on the Esse3 careers of registered persons.
    with rt.esse3("unife").engine.connect() as conn:
        written = dict(
            conn.execute(
                text(
                    'SELECT "PERS_ID", "CODICE_ESI" FROM "P01_STU" '
                    'WHERE "AA_ID" = 2025 AND "CODICE_ESI" IS NOT NULL'
                )
            ).all()
        )
    assert written and all(written[pers_id] == esi for esi, pers_id in persons if pers_id in written)
    # A second run makes no Router call at all.
    before = emulator.stats()["requests"]
    again = sync(rt)
    assert emulator.stats()["requests"] == before
    assert again.counts["registered"] == again.counts["updated"] == 0


def test_lifecycle_closure_reactivation_and_annulled_badge(rt: Runtime) -> None:
    sync(rt)
    card = next(
        c for c in local_cards(rt).values() if c.state == "registered" and c.router_status == "ACTIVE"
    )
    later = NOW + dt.timedelta(hours=1)
    src = rt.esse3("unife").engine

    with src.begin() as conn:  # graduation
        conn.execute(
            update(P01_STU)
            .where(card.stu_id == P01_STU.c.STU_ID)
            .values(STA_STU_COD="X", MOT_STASTU_COD="TIT", DATA_CHIUSURA=TODAY, DATA_MOD=later)
        )
    report = sync(rt)
    assert report.counts["updated"] >= 1
    assert router_cards(rt)[card.escn]["cardStatusType"]["key"] == "INACTIVE"

    with src.begin() as conn:  # reactivation, after the badge validity ended
        conn.execute(
            update(P01_STU)
            .where(card.stu_id == P01_STU.c.STU_ID)
            .values(
                STA_STU_COD="A",
                MOT_STASTU_COD=None,
                DATA_CHIUSURA=None,
                DATA_MOD=later + dt.timedelta(hours=1),
            )
        )
    much_later = card.expires_at + dt.timedelta(days=30)
    report = sync(rt, today=much_later)
    # the badge ran out: never extended by esc-sync, reported; the card stays as it was
    assert report.counts["badge_expired"] >= 1
    assert router_cards(rt)[card.escn]["cardStatusType"]["key"] == "INACTIVE"
    renewed = much_later + dt.timedelta(days=300)
    with src.begin() as conn:  # Esse3 renews the badge of the reactivated career
        conn.execute(
            update(P01_BADGE)
            .where(card.bdg_id == P01_BADGE.c.BDG_ID)
            .values(DATA_FIN=renewed, DATA_MOD=later + dt.timedelta(hours=1, minutes=30))
        )
    sync(rt, today=much_later)
    remote = router_cards(rt)[card.escn]
    assert remote["cardStatusType"]["key"] == "ACTIVE"
    assert dt.date.fromisoformat(remote["expiresAt"]) == renewed

    with src.begin() as conn:  # the badge is annulled and replaced
        conn.execute(
            update(P01_BADGE)
            .where(card.bdg_id == P01_BADGE.c.BDG_ID)
            .values(ANN_FLG=1, DATA_MOD=later + dt.timedelta(hours=2))
        )
        old = conn.execute(select(P01_BADGE).where(card.bdg_id == P01_BADGE.c.BDG_ID)).one()._asdict()
        new_id = conn.execute(text('SELECT MAX("BDG_ID") + 1 FROM "P01_BADGE"')).scalar_one()
        conn.execute(
            P01_BADGE.insert().values(
                {**old, "BDG_ID": new_id, "ANN_FLG": 0, "DATA_MOD": later + dt.timedelta(hours=2)}
            )
        )
    sync(rt)
    cards = local_cards(rt)
    remote = router_cards(rt)
    assert remote[card.escn]["cardStatusType"]["key"] == "INACTIVE"
    [replacement] = [c for c in cards.values() if c.bdg_id == new_id]
    assert replacement.escn != card.escn and remote[replacement.escn]["cardStatusType"]["key"] == "ACTIVE"


def test_existing_person_is_adopted_and_a_recorded_card_reconciled(rt: Runtime) -> None:
    ateneo = rt.settings.ateneo("unife")
    ingest_careers(rt.engine, rt.esse3("unife"), ateneo, Partition(YEAR, "unife"), today=TODAY)
    with rt.engine.connect() as conn:
        first = router_persons.person_candidates(conn, "unife", YEAR)[0]
    esi = compose_esi("unife.it", first.person_key)

    async def pre_register() -> None:  # an earlier run whose answer was lost
        async with rt.router_client("unife") as c:
            await c.create_person(person_body(esi, ateneo.pic, "Someone Else", None, "BACHELOR"))

    asyncio.run(pre_register())
    report = CallReport()
    assign_esis(
        rt.engine,
        rt.esse3("unife"),
        lambda: rt.router_client("unife"),
        ateneo,
        Partition(YEAR, "unife"),
        report,
    )
    assert report.counts["adopted"] == 1 and report.counts["failed"] == 0

    # A card recorded and POSTed, then the process died before confirming it.
    ingest_badges(rt.engine, rt.esse3("unife"), Partition(YEAR, "unife"))
    with rt.engine.connect() as conn:
        rows = card_store.card_candidates(conn, "unife", YEAR)
    work = plan_cards(rows, ateneo, EscnMinter(ateneo.pic), TODAY).work
    w = work[0]
    record_intent(rt, w)

    async def post_card() -> None:
        async with rt.router_client("unife") as c:
            await c.create_card(w.body)

    asyncio.run(post_card())
    report = CallReport()
    sync_cards(
        rt.engine, lambda: rt.router_client("unife"), ateneo, Partition(YEAR, "unife"), report, today=TODAY
    )
    assert report.counts["reconciled"] == 1
    cards = local_cards(rt)
    assert cards[w.escn].state == "registered"  # same number: no second card for that badge
    assert sum(1 for c in router_cards(rt).values() if c["cardNumber"] == w.escn) == 1
    assert len([c for c in cards.values() if c.bdg_id == w.bdg_id]) == 1


def record_intent(rt: Runtime, w: CardWork) -> None:
    """What sync_cards commits before its POST: the badge's minted number, state pending."""
    with rt.engine.begin() as conn:
        card_store.record_card_intents(conn, "unife", YEAR, [w])


def open_quarantine(rt: Runtime, stage: str = "cards") -> dict[str, str]:
    with rt.engine.connect() as conn:
        rows = conn.execute(
            select(Quarantine.source_key, Quarantine.reason).where(
                Quarantine.stage == stage, Quarantine.resolved_at.is_(None)
            )
        )
        return dict(rows.all())


def test_a_card_left_failed_by_an_earlier_client_is_recovered_by_the_next_run(rt: Runtime) -> None:
    """Earlier clients read flat fields from the CardView on 409 ER-0002, found no match and marked
    the card failed for good. The next run retries it, reads the nested issuer and person, and
    adopts the card: registered, quarantine resolved, no second card."""
    sync(rt)
    card = next(c for c in local_cards(rt).values() if c.state == "registered")
    with rt.engine.begin() as conn:
        conn.execute(
            update(Card)
            .where(Card.escn == card.escn)
            .values(state="failed", router_status=None, synced_hash=None, last_error="old")
        )
        conn.execute(
            Quarantine.__table__.insert().values(
                institution="unife", academic_year=YEAR, stage="cards", source_table="P01_BADGE",
                source_key=str(card.bdg_id),
                reason="ER-0002 but the Router holds the number for another person or issuer",
                first_seen=NOW, last_seen=NOW,
            )
        )  # fmt: skip
    report = sync(rt)
    assert report.counts["reconciled"] == 1 and report.counts["failed"] == 0
    assert local_cards(rt)[card.escn].state == "registered"
    assert str(card.bdg_id) not in open_quarantine(rt)
    assert len(router_cards(rt)) == sum(1 for c in local_cards(rt).values() if c.state == "registered")


def test_a_number_someone_else_holds_is_replaced_by_a_fresh_one(rt: Runtime) -> None:
    """A 409 ER-0002 on a number that is not ours (another person's card) never quarantines the
    badge: the recorded number is dropped and the badge registered under a freshly minted one."""
    ateneo, p = rt.settings.ateneo("unife"), Partition(YEAR, "unife")
    ingest_careers(rt.engine, rt.esse3("unife"), ateneo, p, today=TODAY)
    assign_esis(rt.engine, rt.esse3("unife"), lambda: rt.router_client("unife"), ateneo, p, CallReport())
    ingest_badges(rt.engine, rt.esse3("unife"), p)
    with rt.engine.connect() as conn:
        rows = card_store.card_candidates(conn, "unife", YEAR)
    w = plan_cards(rows, ateneo, EscnMinter(ateneo.pic), TODAY).work[0]
    record_intent(rt, w)
    stranger = compose_esi("unife.it", "stranger-1")

    async def take_the_number() -> None:
        async with rt.router_client("unife") as c:
            await c.create_person(person_body(stranger, ateneo.pic, "A Stranger", None, "BACHELOR"))
            await c.create_card(w.body | {"personIdentifier": stranger})

    asyncio.run(take_the_number())
    report = CallReport()
    sync_cards(rt.engine, lambda: rt.router_client("unife"), ateneo, p, report, today=TODAY)
    assert report.counts["reminted"] == 1 and report.counts["failed"] == 0
    [mine] = [c for c in local_cards(rt).values() if c.bdg_id == w.bdg_id]
    assert mine.escn != w.escn and mine.state == "registered"
    remote = router_cards(rt)
    assert remote[mine.escn]["person"]["identifier"] == w.esi
    assert remote[w.escn]["person"]["identifier"] == stranger  # theirs, untouched
    assert open_quarantine(rt) == {}


def test_escn_prefix_is_configurable_and_minters_never_share_a_clock_sequence(rt: Runtime) -> None:
    atenei = tuple(replace(a, escn_prefix=7) if a.code == "unife" else a for a in rt.settings.atenei)
    rt.settings = replace(rt.settings, atenei=atenei)
    sync(rt)
    numbers = [c.escn for c in local_cards(rt).values()]
    assert numbers and all(n.endswith("007999978433") for n in numbers)
    with rt.engine.begin() as conn:
        taken = [card_store.take_clock_sequence(conn, "999978433") for _ in range(5)]
        other = card_store.take_clock_sequence(conn, "999912345")
    assert len(set(taken)) == 5 and other == 0
    # two minters in the same millisecond with their own sequences never mint the same number
    frozen = lambda: 1_767_225_600_000  # noqa: E731
    a = EscnMinter("999978433", 7, clock=frozen, clock_seq=taken[0])
    b = EscnMinter("999978433", 7, clock=frozen, clock_seq=taken[1])
    assert not {a.mint() for _ in range(1000)} & {b.mint() for _ in range(1000)}


def test_opt_in_university_registers_only_consenting_students(rt: Runtime, emulator) -> None:
    report = sync(rt, "unipa")
    assert report.counts["opted_out"] > 0
    with rt.engine.connect() as conn:
        states = dict(
            conn.execute(
                text("SELECT p.state, COUNT(*) FROM persons p WHERE p.institution = 'unipa' GROUP BY p.state")
            ).all()
        )
        consent = dict(
            conn.execute(
                text(
                    "SELECT p.esi, c.consent FROM persons p JOIN careers c ON c.institution = p.institution "
                    "AND c.pers_id = p.pers_id WHERE p.institution = 'unipa' AND p.state = 'registered'"
                )
            ).all()
        )
    assert states["opted_out"] > 0 and set(consent.values()) == {"S"}
    assert emulator.stats()["organisations"]["999912345"]["persons"] == states["registered"]

    # Consent withdrawn: the student's active card is deactivated.
    card = next(
        c for c in local_cards(rt).values() if c.institution == "unipa" and c.router_status == "ACTIVE"
    )
    src = rt.esse3("unipa").engine
    with src.begin() as conn:
        pers_id = conn.execute(select(P01_STU.c.PERS_ID).where(card.stu_id == P01_STU.c.STU_ID)).scalar_one()
        conn.execute(
            update(P01_ANAPER)
            .where(pers_id == P01_ANAPER.c.PERS_ID)
            .values(CONSENSO_ESC="N", DATA_MOD=NOW + dt.timedelta(hours=1))
        )
    sync(rt, "unipa")
    assert router_cards(rt, "unipa")[card.escn]["cardStatusType"]["key"] == "INACTIVE"


def test_missing_key_stops_with_one_line(rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    from etl.errors import EscSyncError

    monkeypatch.delenv("ESC_SYNC_ROUTER_KEY_UNIFE")
    with pytest.raises(
        EscSyncError, match=r"university unife: Router API key missing.*ESC_SYNC_ROUTER_KEY_UNIFE"
    ):
        sync(rt)
    with rt.engine.connect() as conn:
        assert conn.execute(select(Person).where(Person.state == "registered")).first() is None


# PostgreSQL only: SQLite keeps no planner statistics
@pytest.mark.parametrize("state_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True)
def test_the_planner_knows_a_synced_partition_s_careers_and_persons(rt: Runtime, tmp_path: Path) -> None:
    """A partition's rows carry values (its university, its year) the planner's statistics have not
    seen; partitions of a few hundred careers must refresh them too, or it estimates a handful of rows
    and joins them by nested loops quadratic in their number (a crash test's reruns: 94 s, not 27)."""
    esse3 = tmp_path / "esse3-unife.sqlite"  # a few hundred new persons a year (the fixture's: ~100)
    esse3.unlink()
    generate(f"sqlite:///{esse3}", seed=3, students=700, first_year=2024, last_year=YEAR, now=NOW)
    with rt.engine.connect() as conn:  # autovacuum would hide the difference: it must not run here
        conn.exec_driver_sql("ALTER TABLE careers SET (autovacuum_enabled = off)")
        conn.exec_driver_sql("ALTER TABLE persons SET (autovacuum_enabled = off)")
        conn.commit()
    for year in (2024, YEAR):
        sync(rt, year=year)
    checks = {
        "careers": f"institution = 'unife' AND academic_year = {YEAR}",
        "persons": "institution = 'unife'",
    }
    with rt.engine.connect() as conn:
        for table, where in checks.items():
            actual = conn.execute(text(f"SELECT count(*) FROM {table} WHERE {where}")).scalar_one()
            plan = conn.execute(text(f"EXPLAIN (FORMAT JSON) SELECT * FROM {table} WHERE {where}"))
            estimated = plan.scalar_one()[0]["Plan"]["Plan Rows"]
            assert estimated >= actual / 2, (table, estimated, actual)
        partition = conn.execute(text(f"SELECT count(*) FROM careers WHERE {checks['careers']}"))
        assert 100 < partition.scalar_one() < 500  # under the old threshold
