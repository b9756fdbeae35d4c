"""Reconciliation with the Router (`esc-sync reconcile`, the ``router_matches_local`` asset check):
walk every person and card the Router holds for each university (10-item pages, each card read whole,
within the client's concurrency and rate limit), compare with the state DB (etl.domain.reconcile),
and with ``repair`` record the repairs whose rule is clear; the partitions named then carry them out."""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass, field
from functools import partial

from etl.assets.router_calls import CallReport, run_with_client
from etl.domain.reconcile import CardView, Drift, find_drift
from etl.erasure import ErasureReport, due_for_erasure, erase_targets
from etl.errors import EscSyncError
from etl.partitions import Partition
from etl.resources.router import RouterClient
from etl.resources.runtime import Runtime
from etl.store import reconcile as store

CARD_BATCH = 500  # cards read whole at a time (the client's semaphore bounds the calls in flight)


@dataclass(frozen=True)
class UniversityDrift:
    institution: str
    drift: Drift | None  # None: the university could not be walked (error)
    error: str | None = None
    to_run: list[Partition] = field(default_factory=list)  # partitions that carry out the repairs
    erased_held: int = 0  # erased persons and deleted cards the Router still holds


async def walk_router(client: RouterClient) -> tuple[set[str], dict[str, CardView]]:
    persons = {p["identifier"] async for p in client.iter_persons()}
    numbers = [c["cardNumber"] async for c in client.iter_cards()]
    cards: dict[str, CardView] = {}
    for start in range(0, len(numbers), CARD_BATCH):
        for c in await asyncio.gather(*(client.get_card(n) for n in numbers[start : start + CARD_BATCH])):
            cards[c["cardNumber"]] = CardView(
                c["person"]["identifier"],
                c["cardStatusType"]["key"],
                dt.date.fromisoformat(c["expiresAt"][:10]),
                c["cardType"]["key"],
            )
    return persons, cards


def reconcile(
    runtime: Runtime, institutions: list[str], *, repair: bool, today: dt.date | None = None
) -> list[UniversityDrift]:
    today = today or dt.date.today()
    years = set(runtime.settings.academic_years)
    results = []
    for code in institutions:
        try:
            remote_persons, remote_cards = run_with_client(
                partial(runtime.router_client, code), walk_router, CallReport()
            )
        except EscSyncError as e:  # a refused key, the Router down: this university only
            results.append(UniversityDrift(code, None, str(e)))
            continue
        with runtime.engine.connect() as conn:
            local_persons = store.registered_persons(conn, code)
            local_cards = store.registered_cards(conn, code)
            erased_persons, deleted_cards = store.erased(conn, code)
        drift = find_drift(local_persons, local_cards, remote_persons, remote_cards, today)
        held_persons, held_cards = remote_persons & erased_persons, set(remote_cards) & deleted_cards
        if repair and (held_persons or held_cards):
            with runtime.engine.begin() as conn:
                store.reopen_erasures(conn, code, held_persons, held_cards)
            ateneo = runtime.settings.ateneo(code)
            due = due_for_erasure(runtime.engine, ateneo, runtime.settings.retention, today)
            erase_targets(
                runtime.engine, partial(runtime.router_client, code), ateneo, due, runtime.settings.home,
                ErasureReport(),
            )  # fmt: skip
        touched: set[int] = set()
        if repair and drift.repairable:
            with runtime.engine.begin() as conn:
                touched |= store.requeue_persons(conn, code, drift.missing_persons)
                touched |= store.requeue_cards(conn, code, drift.missing_cards)
                touched |= store.record_router_cards(conn, code, drift.stale_cards)
        to_run = [Partition(y, code) for y in sorted(touched & years)]
        results.append(UniversityDrift(code, drift, None, to_run, len(held_persons) + len(held_cards)))
    return results
