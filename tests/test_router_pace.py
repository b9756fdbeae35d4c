"""A university's Router rate limit shared by every process sending for its key (issue 13): send
times reserved in the state DB, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import itertools
import time
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import Engine

from etl.emulator import start_emulator
from etl.resources.router import RouterClient
from etl.resources.throttle import SharedThrottle
from etl.store.db import make_engine
from etl.store.migrate import upgrade
from etl.store.pace import hold_sends, reserve_send_time
from tests.test_router_reliability import KEY, PIC


def test_send_times_follow_one_schedule_per_university(state_engine: Engine) -> None:
    assert reserve_send_time(state_engine, "unife", 0.5, now=1000.0) == 1000.0  # idle: at once
    assert reserve_send_time(state_engine, "unife", 0.5, now=1000.1) == 1000.5  # after the previous
    assert reserve_send_time(state_engine, "unife", 0.5, now=1000.2) == 1001.0
    assert reserve_send_time(state_engine, "unipa", 0.5, now=1000.2) == 1000.2  # its own key, own limit
    assert reserve_send_time(state_engine, "unife", 0.5, now=2000.0) == 2000.0  # idle again
    hold_sends(state_engine, "unife", until=2010.0)  # a Retry-After seen by one worker holds them all
    assert reserve_send_time(state_engine, "unife", 0.5, now=2001.0) == 2010.0


def test_concurrent_processes_never_share_a_send_time(state_url: str) -> None:
    """Four senders with their own connections (as four workers would) draw 200 send times: all
    distinct and at least one interval apart."""
    interval = 0.01
    engines = [make_engine(state_url) for _ in range(4)]
    upgrade(engines[0])
    now = time.time()

    def sender(engine: Engine) -> list[float]:
        return [reserve_send_time(engine, "unife", interval, now) for _ in range(50)]

    with ThreadPoolExecutor(4) as pool:
        times = sorted(t for mine in pool.map(sender, engines) for t in mine)
    for e in engines:
        e.dispose()
    assert len(times) == 200
    assert min(b - a for a, b in itertools.pairwise(times)) >= interval - 1e-6


def test_two_workers_of_one_university_together_stay_under_its_limit(state_url: str) -> None:
    """Two clients (two workers) at 20 requests/s shared: 40 requests take at least 39/20 s, where
    two clients with limits of their own would take half that."""
    rate, each = 20.0, 20
    engine = make_engine(state_url)
    upgrade(engine)
    engine.dispose()
    with start_emulator({KEY: PIC}) as emu:

        def worker() -> None:
            engine = make_engine(state_url)

            async def calls() -> None:
                throttle = SharedThrottle(engine, "unife", rate)
                async with RouterClient(emu.url, KEY, "unife", PIC, "ESC_KEY", throttle=throttle) as client:
                    for _ in range(each):
                        await client.generate_escn(1)

            asyncio.run(calls())
            engine.dispose()

        started = time.monotonic()
        with ThreadPoolExecutor(2) as pool:
            for done in [pool.submit(worker) for _ in range(2)]:
                done.result()
        elapsed = time.monotonic() - started
    assert elapsed >= (2 * each - 1) / rate - 0.05
