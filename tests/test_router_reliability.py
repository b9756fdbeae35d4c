"""Reliability of the Router integration (issue 3), against the emulator over real HTTP on loopback.

- A backfill with 20% injected faults of mixed kinds (some striking after the Router committed the
  change) ends exactly where a fault-free run ends, and local state equals Router state.
- The sync process SIGKILLed at random points five times, then re-run, converges: no duplicate or
  orphan card, and the ESCNs recorded before a kill are the ones at the Router.
- A wrong key, a wrong PIC or a 403 stop the run at once with one line naming the university, and
  nothing is marked registered.

"Eligible" is what a fault-free reference run registers from the same generated Esse3 data: the
tests compare with it rather than re-deriving the domain rules.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from etl.assets.badges import ingest_badges
from etl.assets.cards import sync_cards
from etl.assets.careers import ingest_careers
from etl.assets.esi import assign_esis
from etl.assets.router_calls import CallReport
from etl.config import Settings
from etl.demo.config import demo_config_toml, key_env
from etl.demo.generate import generate
from etl.domain.states import SyncState
from etl.emulator import EmulatorProcess, FaultConfig, start_emulator
from etl.errors import EscSyncError
from etl.partitions import Partition
from etl.resources.router import RouterClient
from etl.resources.runtime import Runtime
from etl.store.db import make_engine
from etl.store.migrate import upgrade
from etl.store.models import Card, Person
from tests.fixtures.world import demo_settings

INST = "unife"
PIC = "999978433"  # unife's PIC in the demo configuration
OTHER_PIC = "123456789"
KEY = "reliability-unife-key-0123456789"
OTHER_KEY = "reliability-other-key-9876543210"
KEY_ENV = key_env(INST)
STUDENTS = 2000
SEED = 31
NOW = dt.datetime.now().replace(microsecond=0)  # the data must be current: card expiries follow today
REPO = Path(__file__).resolve().parents[1]

MIXED_FAULTS = {"500": 1, "502": 1, "503": 1, "429": 1, "drop": 1, "html": 1, "timeout": 0.3}


# ---- helpers -------------------------------------------------------------------------------------


def make_esse3(home: Path, students: int = STUDENTS) -> None:
    """The demo Esse3 of unife where the demo configuration looks for it. Same seed and clock:
    the same data in every test, so runs can be compared with the reference."""
    home.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{home / f'esse3-{INST}.sqlite'}"
    generate(url, seed=SEED, students=students, first_year=2019, last_year=2025, now=NOW)


def settings_for(home: Path, database_url: str, router_url: str) -> Settings:
    s = demo_settings(home, database_url)
    return replace(s, router=replace(s.router, url=router_url))


def client_factory(
    url: str, key: str = KEY, inst: str = INST, pic: str = PIC, **overrides: Any
) -> Callable[[], RouterClient]:
    """Short timeouts and backoff (the emulator is local), more retries than the default: 20% faults
    make 7 failures in a row of one of ~3,000 calls a few-percent event, and a run must not depend on
    that luck (a call whose retries run out is retried by the next run; here we want one run)."""
    params: dict[str, Any] = {
        "concurrency": 16,
        "timeout_s": 1.0,
        "max_retries": 10,
        "backoff_base_s": 0.02,
        "backoff_max_s": 0.5,
    } | overrides
    return lambda: RouterClient(
        base_url=url, api_key=key, institution=inst, pic=pic, api_key_env=key_env(inst), **params
    )


def run_chain(settings: Settings, runtime: Runtime, factory: Callable[[], RouterClient]) -> CallReport:
    """What the esc_sync job does for every partition of unife: careers → esi_assignments → esc_cards."""
    ateneo = settings.ateneo(INST)
    source = runtime.esse3(INST)
    report = CallReport()
    for year in settings.academic_years:
        p = Partition(year, INST)
        ingest_careers(runtime.engine, source, ateneo, p, today=dt.date.today())
        assign_esis(runtime.engine, source, factory, ateneo, p, report)
        ingest_badges(runtime.engine, source, p)
        sync_cards(runtime.engine, factory, ateneo, p, report)
    return report


@dataclass(frozen=True)
class Local:
    persons: dict[str, str]  # esi -> state
    cards: dict[int, tuple[str, str, str, str | None, dt.date, str]]
    # bdg_id -> (escn, esi, state, router_status, expires_at, card_type)

    def registered_cards(self) -> dict[str, tuple[str, str | None, dt.date, str]]:
        """escn -> (esi, router status, expiry, card type) of the cards the Router should hold."""
        return {c[0]: (c[1], c[3], c[4], c[5]) for c in self.cards.values() if c[2] == "registered"}

    def without_escns(self) -> dict[int, tuple[Any, ...]]:
        return {bdg: c[1:] for bdg, c in self.cards.items()}


def local_state(engine: Engine, inst: str = INST) -> Local:
    with engine.connect() as conn:
        persons = dict(conn.execute(select(Person.esi, Person.state).where(Person.institution == inst)).all())
        rows = conn.execute(
            select(
                Card.bdg_id,
                Card.escn,
                Card.esi,
                Card.state,
                Card.router_status,
                Card.expires_at,
                Card.card_type,
            ).where(Card.institution == inst)
        )
        cards = {r[0]: tuple(r[1:]) for r in rows}
    return Local(persons, cards)  # type: ignore[arg-type]


def unconfirmed(engine: Engine, inst: str = INST) -> int:
    """Persons and cards recorded as intents (pending) and not yet confirmed by the Router."""
    with engine.connect() as conn:
        counts = (
            select(func.count()).select_from(m).where(m.institution == inst, m.state == SyncState.PENDING)
            for m in (Person, Card)
        )
        return sum(conn.execute(c).scalar_one() for c in counts)


def router_lists(url: str, **who: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every person and card of our PIC, walked through the 10-item pages with the client; each card
    then read whole (list items are CardLiteViews, without status or type)."""

    async def walk() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        async with client_factory(url, **who)() as client:
            numbers = [c["cardNumber"] async for c in client.iter_cards()]
            cards = await asyncio.gather(*(client.get_card(n) for n in numbers))
            return [p async for p in client.iter_persons()], list(cards)

    return asyncio.run(walk())


def diff(expected: dict[Any, Any], actual: dict[Any, Any], limit: int = 5) -> str:
    keys = sorted(set(expected) | set(actual), key=str)
    bad = [(k, expected.get(k, "<absent>"), actual.get(k, "<absent>")) for k in keys]
    bad = [b for b in bad if b[1] != b[2]]
    return f"{len(bad)} differences, e.g. " + "; ".join(
        f"{k}: expected {e}, got {a}" for k, e, a in bad[:limit]
    )


def assert_router_equals_local(router_url: str, local: Local, emu: EmulatorProcess, **client: str) -> None:
    """``client``: ``key``, ``inst``, ``pic`` of another university than unife."""
    persons, cards = router_lists(router_url, **client)
    esis = [p["identifier"] for p in persons]
    assert len(esis) == len(set(esis)), "the Router holds a person twice"
    registered = {esi for esi, state in local.persons.items() if state == "registered"}
    assert set(esis) == registered, diff(dict.fromkeys(registered, 1), dict.fromkeys(esis, 1))

    numbers = [c["cardNumber"] for c in cards]
    assert len(numbers) == len(set(numbers)), "the Router lists a card twice"
    today = dt.datetime.now(dt.UTC).date()  # the emulator's clock decides EXPIRED
    expected = {
        escn: (esi, "EXPIRED" if expires < today else status, expires.isoformat(), kind)
        for escn, (esi, status, expires, kind) in local.registered_cards().items()
    }
    actual = {
        c["cardNumber"]: (
            c["person"]["identifier"],
            c["cardStatusType"]["key"],
            c["expiresAt"],
            c["cardType"]["key"],
        )
        for c in cards
    }
    # Same numbers (no orphan at the Router, nothing registered locally that the Router lacks), and
    # the same person, status, expiry and type on each.
    assert actual == expected, diff(expected, actual)
    # The local table holds one card per badge (unique index); the Router holds exactly those.
    counts = emu.stats()["organisations"][client.get("pic", PIC)]
    assert counts == {"persons": len(registered), "cards": len(expected), "deleted_cards": 0}


def assert_same_as_reference(local: Local, ref: Local) -> None:
    assert local.persons == ref.persons, "persons: " + diff(ref.persons, local.persons)
    mine, theirs = local.without_escns(), ref.without_escns()
    assert mine == theirs, "cards by badge: " + diff(theirs, mine)
    assert not {s for s in local.persons.values()} - {"registered", "failed", "opted_out"}
    assert not {c[2] for c in local.cards.values()} - {"registered", "failed"}


# ---- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Local:
    """A fault-free run of the same data into its own emulator and state DB: what is eligible."""
    home = tmp_path_factory.mktemp("reference")
    make_esse3(home)
    with start_emulator({KEY: PIC}, home / "router.sqlite") as emu:
        settings = settings_for(home, f"sqlite:///{home / 'state.sqlite'}", emu.url)
        runtime = Runtime(settings)
        try:
            upgrade(runtime.engine)
            report = run_chain(settings, runtime, client_factory(emu.url))
            ref = local_state(runtime.engine)
            assert_router_equals_local(emu.url, ref, emu)
        finally:
            runtime.dispose()
    assert report.counts["registered"] > 1000 and report.retries == 0
    assert sum(1 for s in ref.persons.values() if s == "registered") > 1000
    assert (
        sum(1 for c in ref.cards.values() if c[2] == "registered") > 400
    )  # badges whose validity ended are not registered
    return ref


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[EmulatorProcess]:
    with start_emulator({KEY: PIC, OTHER_KEY: OTHER_PIC}, tmp_path / "router.sqlite") as emu:
        yield emu


# ---- 1. faults -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_backfill_with_20_percent_mixed_faults_registers_exactly_what_a_clean_run_does(
    reference: Local, emulator: EmulatorProcess, state_url: str, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    make_esse3(home)
    emulator.set_faults(
        FaultConfig(
            fail_rate=0.2,
            fault_kinds=MIXED_FAULTS,
            post_commit_share=0.5,  # half of the write faults strike after the Router committed
            retry_after_s=0,  # the client pauses globally on Retry-After: keep the test short
            timeout_s=2.0,  # > the client's 1 s timeout
            seed=2026,
        )
    )
    settings = settings_for(home, state_url, emulator.url)
    runtime = Runtime(settings)
    try:
        upgrade(runtime.engine)
        report = run_chain(settings, runtime, client_factory(emulator.url))
        local = local_state(runtime.engine)
    finally:
        runtime.dispose()

    stats = emulator.stats()
    emulator.set_faults(FaultConfig())  # walk the Router lists without faults
    # The faults really happened, of every kind, and the idempotency paths were taken.
    assert stats["faults_total"] >= 0.15 * stats["requests"], stats
    assert all(stats["faults"].get(k, 0) > 0 for k in MIXED_FAULTS), stats["faults"]
    assert stats["faults"]["post_commit"] > 50, stats["faults"]
    assert report.retries >= stats["faults_total"] * 0.9, (report.retries, stats)
    assert report.counts["adopted"] > 0 and report.counts["reconciled"] > 0, report.counts
    assert report.counts["failed"] == 0, report.counts

    assert_same_as_reference(local, reference)
    assert_router_equals_local(emulator.url, local, emulator)
    print(
        f"requests {stats['requests']}, faults {stats['faults']}, retries {report.retries}, {report.counts}"
    )


# ---- 2. SIGKILL at random points -----------------------------------------------------------------

# A pre-loaded parent ("zygote") forks one process per sync run, so a run starts in milliseconds
# instead of seconds of imports; each run is still its own process, with its own DB connections and
# Router client, killed with SIGKILL by the test. A run does what the esc_sync job does for every
# partition of unife and writes progress lines to a file, so the test knows where a kill strikes.
ZYGOTE = """
import os, sys, traceback
from etl.assets.badges import ingest_badges
from etl.assets.cards import sync_cards
from etl.assets.careers import ingest_careers
from etl.assets.esi import assign_esis
from etl.assets.router_calls import CallReport
from etl.config import load_settings
from etl.partitions import Partition
from etl.resources.runtime import Runtime


def chain(out):
    settings = load_settings()
    runtime = Runtime(settings)
    ateneo = settings.ateneo("unife")
    source = runtime.esse3("unife")
    factory = lambda: runtime.router_client("unife")
    print("ready", file=out)
    for year in settings.academic_years:
        p = Partition(year, "unife")
        report = CallReport()
        ingest_careers(runtime.engine, source, ateneo, p)
        print(year, "esi", file=out)
        assign_esis(runtime.engine, source, factory, ateneo, p, report)
        ingest_badges(runtime.engine, source, p)
        print(year, "cards", file=out)
        sync_cards(runtime.engine, factory, ateneo, p, report)
        print(year, "done", dict(report.counts), file=out)
    print("finished", file=out)


print("loaded", flush=True)
for line in sys.stdin:
    pid = os.fork()
    if pid == 0:
        code = 0
        with open(line.strip(), "w", buffering=1) as out:
            try:
                chain(out)
            except BaseException:
                traceback.print_exc()
                print("failed", file=out)
                code = 1
        os._exit(code)
    print(pid, flush=True)
    print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
"""


def sync_env(home: Path, database_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ESC_SYNC_", "DAGSTER_"))}
    env |= {
        "ESC_SYNC_HOME": str(home),
        "ESC_SYNC_CONFIG": str(home / "esc-sync.toml"),
        "ESC_SYNC_DATABASE_URL": database_url,
        KEY_ENV: KEY,
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
    }
    return env


def write_config(home: Path, router_url: str, **router: float) -> None:
    extra = "".join(f"{k} = {v}\n" for k, v in router.items())
    toml = demo_config_toml(router_url).replace("concurrency = 16\n", "concurrency = 16\n" + extra)
    (home / "esc-sync.toml").write_text(toml, encoding="utf-8")


@dataclass
class Kill:
    marker: str  # the progress line after which the kill was armed
    delay_s: float
    killed: bool  # False: the run finished before the kill point
    last_line: str = ""
    elapsed_s: float = 0.0
    pending: tuple[int, int] = (0, 0)  # persons, cards recorded but unconfirmed when it died


class Runs:
    """Sync runs forked from one loaded parent process (see ZYGOTE)."""

    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        self.workdir = workdir
        self.log = workdir / "sync.stderr"
        self.count = 0
        with self.log.open("a") as err:
            self.parent = subprocess.Popen(
                [sys.executable, "-c", ZYGOTE],
                env=env,
                cwd=REPO,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
        assert self._read() == "loaded", self.log.read_text()[-3000:]

    def _read(self) -> str:
        assert self.parent.stdout is not None
        line = self.parent.stdout.readline().strip()
        assert line, f"the sync parent died: {self.log.read_text()[-3000:]}"
        return line

    def run(
        self, marker: str, delay_s: float, timeout_s: float = 180, armed: Callable[[], bool] | None = None
    ) -> Kill:
        """Fork a run, wait for its progress line ``marker`` ("ready" = start-up done, "2021 cards" =
        the card phase of 2021 begins), sleep ``delay_s`` and SIGKILL it; with ``armed``, only once it
        holds too (within 5 s): a kill point defined by state, not by timing on a loaded machine.
        The marker "never" lets the run finish."""
        assert self.parent.stdin is not None
        self.count += 1
        progress = self.workdir / f"run-{self.count}.progress"
        started = time.perf_counter()
        self.parent.stdin.write(f"{progress}\n")
        self.parent.stdin.flush()
        pid = int(self._read())
        lines: list[str] = []
        while time.perf_counter() - started < timeout_s:
            lines = progress.read_text().splitlines() if progress.exists() else []
            if marker in lines or lines[-1:] in (["finished"], ["failed"]):
                break
            time.sleep(0.01)
        else:
            os.kill(pid, signal.SIGKILL)
            raise AssertionError(f"run {self.count}: no {marker!r} within {timeout_s} s: {lines[-3:]}")
        time.sleep(delay_s)
        armed_by = time.perf_counter() + 5
        while armed is not None and not armed() and time.perf_counter() < armed_by:
            if progress.read_text().splitlines()[-1:] in (["finished"], ["failed"]):
                break
            time.sleep(0.005)
        lines = progress.read_text().splitlines()
        killed = marker != "never" and lines[-1] not in ("finished", "failed")
        if killed:
            os.kill(pid, signal.SIGKILL)  # our own fork, by its id
        code = int(self._read())
        lines = progress.read_text().splitlines()
        assert "failed" not in lines, self.log.read_text()[-3000:]
        assert code == (-signal.SIGKILL if killed else 0), (code, lines[-3:])
        return Kill(marker, round(delay_s, 2), killed, lines[-1], round(time.perf_counter() - started, 1))

    def close(self) -> None:
        assert self.parent.stdin is not None
        self.parent.stdin.close()
        try:
            self.parent.wait(30)
        finally:
            if self.parent.poll() is None:
                self.parent.kill()
                self.parent.wait()


@pytest.mark.slow
def test_sync_killed_five_times_then_rerun_converges_with_the_same_escns(
    reference: Local, emulator: EmulatorProcess, state_url: str, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    make_esse3(home)
    write_config(home, emulator.url, timeout_s=2.0, max_retries=8)
    engine = make_engine(state_url)
    upgrade(engine)
    env = sync_env(home, state_url)
    # Latency stretches the Router phases (25 ms: wide enough for a kill to land inside one even on a
    # loaded machine); faults (half after the commit) add answers that never came
    # back, so a killed run leaves both kinds of loose ends: unconfirmed intents and unknown outcomes.
    emulator.set_faults(
        FaultConfig(latency_ms=25, fail_rate=0.05, post_commit_share=0.5, retry_after_s=0, seed=7)
    )
    # Random kill points, seeded: one anywhere after start-up, then two in the ESI phase and two in
    # the card phase of random partitions, in chain order so each run gets further. In those phases
    # a kill mostly falls between recording intents and confirming them.
    rng = random.Random(20260101)
    phases = ["esi", "esi", "cards", "cards"]
    rng.shuffle(phases)
    years = sorted(rng.sample(range(2019, 2026), 4))
    markers = [("ready", rng.uniform(0.05, 2.5))]
    markers += [(f"{y} {phase}", rng.uniform(0.05, 0.8)) for y, phase in zip(years, phases, strict=True)]
    recorded: dict[str, int] = {}  # every ESCN in the state DB after a kill -> its badge
    kills = []
    runs = Runs(env, tmp_path)
    try:
        for marker, delay in markers:
            # Inside a Router phase, the kill waits for recorded intents the Router has not confirmed.
            armed = None if marker == "ready" else lambda: unconfirmed(engine) > 0
            kill = runs.run(marker, delay, armed=armed)
            local = local_state(engine)
            kill.pending = (
                sum(s == "pending" for s in local.persons.values()),
                sum(c[2] == "pending" for c in local.cards.values()),
            )
            kills.append(kill)
            for bdg, card in local.cards.items():
                assert recorded.setdefault(card[0], bdg) == bdg, "a badge changed card number"
        assert sum(k.killed for k in kills) >= 4, kills
        assert any(k.pending != (0, 0) for k in kills), kills  # kills struck between intent and confirmation
        assert recorded, kills

        # The re-run: the operator's command, through Dagster.
        emulator.set_faults(FaultConfig())
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "etl.cli", "materialize", "--institution", INST],
            env=env,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-2000:], kills)
        local = local_state(engine)

        context = f"kills: {kills}; re-run {time.perf_counter() - started:.1f} s"
        assert_same_as_reference(local, reference)
        assert_router_equals_local(emulator.url, local, emulator)
        # The same ESCNs: each number recorded before a kill is still its badge's card, at the Router.
        final = {c[0]: bdg for bdg, c in local.cards.items()}
        moved = {escn: bdg for escn, bdg in recorded.items() if final.get(escn) != bdg}
        assert not moved, f"ESCNs recorded before a kill were replaced: {list(moved.items())[:5]}; {context}"
        assert set(recorded) <= set(local.registered_cards()), context

        # Converged: one more run finds nothing to do and calls the Router not once.
        before = emulator.stats()["requests"]
        again = runs.run("never", 0)
        assert again.last_line == "finished", again
        assert emulator.stats()["requests"] == before
        assert local_state(engine) == local
        print(context)  # shown with -s / -rP: where the kills struck
    finally:
        runs.close()
        engine.dispose()


# ---- 3. refused credentials ----------------------------------------------------------------------


class ForbiddenRouter:
    """A loopback server answering 403 with a gateway's HTML page to everything, as the production
    Router does to addresses that are not allow-listed."""

    def __init__(self) -> None:
        self.requests = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _forbid(self) -> None:
                outer.requests += 1
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                body = b"<html><head><title>403 Forbidden</title></head><body>Forbidden</body></html>"
                self.send_response(403)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = _forbid

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/esc-rest"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Refusal:
    """A Router that refuses us; ``requests()`` counts what reached it."""

    url: str
    key: str
    hint: str  # what the one line must tell the operator to check
    requests: Callable[[], int]


@pytest.fixture(scope="module")
def refusers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Callable[[], Refusal]]]:
    db = tmp_path_factory.mktemp("refusing") / "router.sqlite"
    forbidden = ForbiddenRouter()
    with start_emulator({KEY: PIC, OTHER_KEY: OTHER_PIC}, db) as emu:

        def at_emulator(key: str, hint: str) -> Callable[[], Refusal]:
            def make() -> Refusal:
                emu.reset()
                return Refusal(emu.url, key, hint, lambda: emu.stats()["requests"])

            return make

        def at_forbidden() -> Refusal:
            forbidden.requests = 0
            return Refusal(forbidden.url, KEY, "allow-listed", lambda: forbidden.requests)

        try:
            yield {
                "wrong key": at_emulator("unknown-key-0123456789", f"environment variable {KEY_ENV}"),
                # A valid key of another organisation: the Router answers 401 to our PIC in the body.
                "wrong PIC": at_emulator(OTHER_KEY, f"belongs to PIC {PIC}"),
                "403": at_forbidden,
            }
        finally:
            forbidden.close()


REFUSALS = ["wrong key", "wrong PIC", "403"]


def assert_nothing_registered(engine: Engine) -> None:
    local = local_state(engine)
    assert local.persons, "the run never got to the Router"
    assert "registered" not in set(local.persons.values())
    assert all(c[2] != "registered" for c in local.cards.values())


@pytest.mark.parametrize("case", REFUSALS)
def test_refused_credentials_stop_the_run_at_once_with_one_line(
    case: str, refusers: dict[str, Callable[[], Refusal]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    refusal = refusers[case]()
    monkeypatch.setenv(KEY_ENV, refusal.key)
    make_esse3(tmp_path, students=300)
    settings = settings_for(tmp_path, f"sqlite:///{tmp_path / 'state.sqlite'}", refusal.url)
    runtime = Runtime(settings)  # the production client: default retries and backoff
    ateneo = settings.ateneo(INST)
    p = Partition(2025, INST)
    report = CallReport()
    try:
        upgrade(runtime.engine)
        ingest_careers(runtime.engine, runtime.esse3(INST), ateneo, p)
        started = time.perf_counter()
        with pytest.raises(EscSyncError) as info:
            assign_esis(
                runtime.engine, runtime.esse3(INST), lambda: runtime.router_client(INST), ateneo, p, report
            )
        elapsed = time.perf_counter() - started
        # Cards never start without registered persons, and are refused just the same.
        sync_cards(runtime.engine, lambda: runtime.router_client(INST), ateneo, p, report)
        assert_nothing_registered(runtime.engine)
    finally:
        runtime.dispose()

    message = str(info.value)
    assert "\n" not in message and message.startswith(f"university {INST}:"), message
    assert refusal.hint in message, message
    assert refusal.key not in message
    # No retries: at most the first wave of concurrent calls reached the Router.
    assert report.retries == 0
    assert refusal.requests() <= 2 * settings.router.concurrency, refusal.requests()
    assert elapsed < 5, elapsed


# One case through the operator's command (process start and Dagster cost ~10 s each); the three
# are covered above at the asset level.
@pytest.mark.slow
@pytest.mark.parametrize("case", ["403"])
def test_refused_credentials_through_the_cli_exit_5_with_one_stderr_line(
    case: str, refusers: dict[str, Callable[[], Refusal]], tmp_path: Path
) -> None:
    refusal = refusers[case]()
    home = tmp_path / "home"
    make_esse3(home, students=300)
    write_config(home, refusal.url)
    state_url = f"sqlite:///{tmp_path / 'state.sqlite'}"
    engine = make_engine(state_url)
    upgrade(engine)
    env = sync_env(home, state_url) | {KEY_ENV: refusal.key}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "etl.cli", "materialize", "--institution", INST],
        env=env,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    elapsed = time.perf_counter() - started
    try:
        assert_nothing_registered(engine)
    finally:
        engine.dispose()
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 5, (done.stdout, done.stderr)  # ExitCode.ROUTER
    assert len(lines) == 1 and lines[0].startswith(f"esc-sync: university {INST}:"), done.stderr
    assert refusal.hint in lines[0]
    assert refusal.key not in done.stdout + done.stderr
    # The first partition's failure concerns the whole university: its other partitions are skipped
    # (reported), and none of them reached the Router.
    assert done.stdout.count("SKIPPED") == 6 and "(2019|unife; 6 more partition(s)" in lines[0]
    assert refusal.requests() <= 2 * 16
    assert elapsed < 60, elapsed  # process start and Dagster imports included
