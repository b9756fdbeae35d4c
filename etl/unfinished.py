"""Work left undone is found and finished without a person: Router calls whose retries ran out (persons
and cards the Router has not confirmed) and partitions whose latest run failed or was cancelled are run
again, with backoff and a bounded number of attempts (etl.domain.retries), by the deployment's
``unfinished_work`` sensor, and by `esc-sync sync` (without backoff: each is an operator's attempt).

A partition held by the mass-deletion guard waits for a person, not for a retry."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from dagster import DagsterInstance, DagsterRunStatus, RunsFilter
from dagster._core.storage.dagster_run import RunPartitionData
from sqlalchemy import Connection

from etl.config import Settings
from etl.domain.retries import RetryState, exhausted, next_attempt
from etl.partitions import Partition, all_partitions
from etl.store import source_state, work
from etl.store.models import utcnow

PARTITION_TAG = "dagster/partition"
RETRY_TAG = "esc_sync/retry"  # the attempt number of a run the unfinished_work sensor requested
ACTIVE = (
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
    DagsterRunStatus.CANCELING,
)
UNSUCCESSFUL = (DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED)
LOOKBACK = dt.timedelta(days=3)  # a partition whose latest run failed longer ago has given up already


@dataclass(frozen=True)
class PartitionWork:
    partition: Partition
    reasons: tuple[str, ...]  # counts and kinds only

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)


def latest_runs(
    instance: DagsterInstance, *job_names: str, since: dt.datetime | None = None
) -> dict[str, RunPartitionData]:
    """Partition key → its latest run of any of ``job_names`` (updated after ``since``)."""
    latest: dict[str, RunPartitionData] = {}
    for job_name in job_names:
        for d in instance.run_storage.get_run_partition_data(
            RunsFilter(job_name=job_name, updated_after=since)
        ):
            if d.partition not in latest or _started(d) > _started(latest[d.partition]):
                latest[d.partition] = d
    return latest


def _started(d: RunPartitionData) -> float:
    return math.inf if d.start_time is None else d.start_time  # not started yet: the newest


def latest_unsuccessful(instance: DagsterInstance, *job_names: str) -> dict[str, str]:
    """Partition key → status of its latest run of ``job_names`` when that run failed or was cancelled."""
    latest = latest_runs(instance, *job_names, since=dt.datetime.now(dt.UTC) - LOOKBACK)
    return {k: d.status.value for k, d in latest.items() if d.status in UNSUCCESSFUL}


def active_partitions(instance: DagsterInstance, *job_names: str) -> set[str]:
    """Partitions with a run of ``job_names`` queued or in progress: their work is being done."""
    runs = instance.get_runs(RunsFilter(statuses=list(ACTIVE)))  # few: one query for every job
    return {r.tags[PARTITION_TAG] for r in runs if r.job_name in job_names and PARTITION_TAG in r.tags}


def partitions_with_work(
    conn: Connection, settings: Settings, unsuccessful: Mapping[str, str] = {}
) -> list[PartitionWork]:
    """Every configured partition with Router work unfinished or whose latest run did not succeed,
    but for those the guard holds (a person decides)."""
    held = {h.partition_key for h in source_state.holds(conn) if not h.confirmed}
    router = work.unfinished(conn)
    out = []
    for p in all_partitions(settings):
        if p.key in held:
            continue
        reasons = []
        if (u := router.get((p.institution, p.academic_year))) is not None:
            reasons.append(u.describe())
        if p.key in unsuccessful:
            reasons.append(f"latest run {unsuccessful[p.key]}")
        if reasons:
            out.append(PartitionWork(p, tuple(reasons)))
    return out


@dataclass(frozen=True)
class Retry:
    work: PartitionWork
    state: RetryState


def schedule(
    conn: Connection, found: Iterable[PartitionWork], busy: set[str], now: dt.datetime | None = None
) -> tuple[list[Retry], list[Retry]]:
    """Record the attempts due now and forget partitions with no work left. Returns (due, exhausted):
    partitions to run now, and those that have used up their attempts (to be reported)."""
    now = now or utcnow()
    current = work.retries(conn)
    found = list(found)
    work.forget_retries(conn, set(current) - {w.partition.key for w in found})
    due, given_up = [], []
    for w in found:
        state = current.get(w.partition.key)
        if exhausted(state):
            assert state is not None
            given_up.append(Retry(w, state))
            continue
        if w.partition.key in busy:
            continue  # a run is on it
        if (new := next_attempt(state, now)) is not None:
            work.record_attempt(conn, w.partition.key, w.partition.institution, new, w.reason)
            due.append(Retry(w, new))
    return due, given_up
