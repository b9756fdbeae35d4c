"""When a deployment runs a partition again because work was left undone (Router calls whose retries
ran out, a run that failed): with backoff, a bounded number of times, then it stops and says so. Pure:
the sensor (etl.unfinished) carries the decisions out; the state lives in ``partition_retries``.

Attempts come 1, 2, 4, 8, 16, 32, 60 minutes apart (a Router down for an hour is outlasted, a Router
down for a day is not hammered): the eighth, about two hours after the first, is the last, and the
partition is then left for a person (`esc-sync reconcile` and `status` say so; `esc-sync sync` runs it).
"""

from __future__ import annotations

import datetime as dt
from typing import NamedTuple

MAX_ATTEMPTS = 8
FIRST_DELAY = dt.timedelta(minutes=1)
LONGEST_DELAY = dt.timedelta(hours=1)


class RetryState(NamedTuple):
    attempts: int  # runs requested so far for this episode of unfinished work
    first_at: dt.datetime  # when the episode began (names its runs)
    next_at: dt.datetime  # no new attempt before this


def delay(attempts: int) -> dt.timedelta:
    """The wait after the ``attempts``-th attempt."""
    wait: dt.timedelta = FIRST_DELAY * (2 ** max(attempts - 1, 0))
    return min(wait, LONGEST_DELAY)


def exhausted(state: RetryState | None) -> bool:
    return state is not None and state.attempts >= MAX_ATTEMPTS


def next_attempt(state: RetryState | None, now: dt.datetime) -> RetryState | None:
    """The state after requesting an attempt now, or None when none is due (waiting, or exhausted)."""
    if state is None:
        return RetryState(1, now, now + delay(1))
    if exhausted(state) or now < state.next_at:
        return None
    attempts = state.attempts + 1
    return RetryState(attempts, state.first_at, now + delay(attempts))


def run_key(partition_key: str, state: RetryState) -> str:
    """Unique per attempt (Dagster never launches a run key twice), stable within one."""
    return f"{partition_key}@retry:{state.first_at:%Y%m%dT%H%M%S}:{state.attempts}"
