"""Run partitions through Dagster from the command line (demo, CLI backfills, `sync`), on the Dagster
instance in ``$ESC_SYNC_HOME/dagster`` so every run shows up in the UI afterwards."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dagster import (
    AssetKey,
    DagsterExecutionStepExecutionError,
    DagsterInstance,
    DagsterRunStatus,
    Definitions,
    RunsFilter,
)
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from etl.assets.claims import run_over_in
from etl.assets.router_calls import ROUTER_POOL
from etl.config import Settings
from etl.definitions import JOB_NAME
from etl.errors import EscSyncError, ExitCode, UniversityError
from etl.partitions import Partition
from etl.run_tags import HOST_TAG, PID_TAG
from etl.store.db import database_reason
from etl.store.locks import partition_lock, process_alive

DAGSTER_YAML = """\
# Written by esc-sync for the embedded default. Production: storage on PostgreSQL (see README).
telemetry:
  enabled: false
run_monitoring:
  enabled: true
  # A crashed run must not hold an esc_router pool slot forever.
  free_slots_after_run_end_seconds: 300
concurrency:
  pools:
    default_limit: 2
run_retries:
  enabled: true
  max_retries: 1
  retry_on_asset_or_op_failure: false
"""


def dagster_home(settings: Settings) -> Path:
    return Path(os.environ.get("DAGSTER_HOME") or settings.home / "dagster")


def ensure_instance(settings: Settings) -> DagsterInstance:
    home = dagster_home(settings)
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        (home / "dagster.yaml").write_text(DAGSTER_YAML)
    os.environ["DAGSTER_HOME"] = str(home)
    return DagsterInstance.from_config(str(home))


# The CLI prints its own progress lines and one-line errors; Dagster's event log stays in the UI.
_QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


@dataclass(frozen=True)
class PartitionRun:
    partition: Partition
    seconds: float
    metadata: dict[str, dict[str, Any]]  # asset name → metadata values


@dataclass(frozen=True)
class PartitionFailure:
    partition: Partition
    message: str  # one line
    exit_code: ExitCode
    skipped: bool = False  # not run: an earlier partition of its university failed for all of them


@dataclass(frozen=True)
class Backfill:
    runs: list[PartitionRun]
    failures: list[PartitionFailure]
    reaped: int = 0  # runs of dead processes marked failed, their pool slots freed, before starting


def reap_dead_runs(instance: DagsterInstance) -> int:
    """Runs this machine started in a process that no longer exists still hold their ``esc_router``
    pool slots, and without a daemon nothing frees them: the next run would wait forever. Mark them
    failed and free their slots. A live process (or another machine's run) is never touched."""
    host, reaped = socket.gethostname(), 0
    active = [DagsterRunStatus.STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.CANCELING]
    for run in instance.get_runs(filters=RunsFilter(statuses=active, tags={HOST_TAG: host})):
        pid = int(run.tags.get(PID_TAG, "0") or 0)
        if pid and process_alive(pid):
            continue
        instance.report_run_failed(run, message="its process is gone (killed?): marked failed by esc-sync")
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        reaped += 1
    return reaped


def wait_for_router_pool(
    instance: DagsterInstance, timeout_s: float, say: Callable[[str], None], poll_s: float = 1.0
) -> None:
    """Return once the ``esc_router`` pool has a free slot. While live runs hold them all, say so once
    (which runs, where) and give up after ``timeout_s`` with a one-line error, instead of leaving
    Dagster to wait silently. A holder that dies meanwhile is reaped, freeing its slots."""
    deadline = time.monotonic() + timeout_s
    told = False
    while True:
        info = instance.event_log_storage.get_concurrency_info(ROUTER_POOL)
        if info.limit is None or info.active_slot_count < info.limit:
            return
        holders = ", ".join(_describe_run(instance, run_id) for run_id in sorted(info.active_run_ids))
        what = f"a slot of the Router pool {ROUTER_POOL} (limit {info.limit}), held by {holders}"
        if time.monotonic() >= deadline:
            raise EscSyncError(
                f"gave up after {timeout_s:g}s waiting for {what}: re-run when they end, or raise "
                "[runs] wait_timeout_s",
                exit_code=ExitCode.BUSY,
            )
        if not told:
            say(f"waiting for {what} (giving up after {timeout_s:g}s)")
            told = True
        time.sleep(poll_s)
        reap_dead_runs(instance)


def _describe_run(instance: DagsterInstance, run_id: str) -> str:
    run = instance.get_run_by_id(run_id)
    where = f" (process {run.tags[PID_TAG]} on {run.tags[HOST_TAG]})" if run and PID_TAG in run.tags else ""
    return f"run {run_id[:8]}{where}"


def run_partitions(
    defs: Definitions,
    instance: DagsterInstance,
    partitions: Sequence[Partition],
    *,
    progress: Callable[[int, int, PartitionRun | PartitionFailure], None] | None = None,
    say: Callable[[str], None] = lambda _: None,
    wait_timeout_s: float = Settings.run_wait_timeout_s,
    lock_engine: Engine | None = None,
    tags: Mapping[str, str] | None = None,
    isolate_failures: bool = False,
    assets: Collection[str] | None = None,
    job_name: str = JOB_NAME,
) -> Backfill:
    """One run per partition, in partition order. A partition that fails is reported and the others
    go on; a failure that concerns its whole university (a refused key, Esse3 unreachable) skips that
    university's remaining partitions, reported as such (with ``isolate_failures`` each is tried
    anyway: a batch leaves every partition a run of its own, which the unfinished_work sensor
    retries); one that concerns every partition (no
    Router pool slot within ``wait_timeout_s``) skips them all. Unexpected errors are reported as one
    line too (``ESC_SYNC_DEBUG=1`` raises them with their traceback). With ``lock_engine`` (the state
    DB) each run holds its partition's lock from start to end. ``assets`` (asset keys as strings) runs
    only those of the job. ``job_name`` names another job of the partitions (a batch's: the partition
    job, etl.partition_job)."""
    job = defs.resolve_job_def(job_name)
    if assets is not None:
        job = job.get_subset(asset_selection={AssetKey.from_user_string(a) for a in assets})
    reaped = reap_dead_runs(instance)
    tags = {**(tags or {}), PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}
    blocked: dict[str, PartitionFailure] = {}  # university (or "*": all) → the failure that skips it

    def attempt(partition: Partition) -> PartitionRun | PartitionFailure:
        if cause := blocked.get(partition.institution) or blocked.get("*"):
            return PartitionFailure(partition, cause.message, cause.exit_code, skipped=True)
        try:
            wait_for_router_pool(instance, wait_timeout_s, say)
        except EscSyncError as e:
            blocked["*"] = PartitionFailure(partition, str(e), e.exit_code)
            return blocked["*"]
        started = time.perf_counter()
        run_id = str(uuid.uuid4())  # known before the run starts, so the lock can name it
        try:
            # The partition's lock for the whole run (its steps re-enter it): a second run of the
            # partition is refused before its first step, never between two of ours.
            claim = (
                partition_lock(lock_engine, partition.key, run_id, run_over_in(instance), whole_run=True)
                if lock_engine
                else nullcontext()
            )
            with claim:
                result = job.execute_in_process(
                    instance=instance,
                    partition_key=partition.key,
                    run_config=_QUIET,
                    tags=tags,
                    run_id=run_id,
                )
        except Exception as e:  # Dagster raises the step's own exception (or wraps it)
            error = e.user_exception if isinstance(e, DagsterExecutionStepExecutionError) else e
            if os.environ.get("ESC_SYNC_DEBUG") and not isinstance(error, EscSyncError):
                raise
            failure = PartitionFailure(partition, *failure_message(error))
            if isinstance(error, UniversityError) and not isolate_failures:
                blocked[partition.institution] = failure
            return failure
        metadata = {
            m.asset_key.to_user_string(): {k: v.value for k, v in m.metadata.items()}
            for m in (
                e.step_materialization_data.materialization for e in result.get_asset_materialization_events()
            )
        }
        return PartitionRun(partition, time.perf_counter() - started, metadata)

    runs: list[PartitionRun] = []
    failures: list[PartitionFailure] = []
    for i, partition in enumerate(partitions, 1):
        outcome = attempt(partition)
        if isinstance(outcome, PartitionFailure):
            failures.append(outcome)
        else:
            runs.append(outcome)
        if progress:
            progress(i, len(partitions), outcome)
    return Backfill(runs, failures, reaped)


def failure_message(error: BaseException | None) -> tuple[str, ExitCode]:
    """One line for a partition's failure, and the kind of failure as the exit code that names it."""
    if isinstance(error, EscSyncError):
        return str(error), error.exit_code
    if isinstance(error, OSError) and error.errno:  # disk full, permission denied, ...: say which file
        where = f" on {error.filename}" if error.filename else ""
        return f"{os.strerror(error.errno)}{where} (nothing half-written: re-run once fixed)", ExitCode.FILES
    if isinstance(error, OperationalError):  # the state DB went away mid-run (Esse3's are UniversityErrors)
        return f"state DB error: {database_reason(error)} (re-run once it is back)", ExitCode.DATABASE
    # The type only: an exception's text may quote data (names) from the row it failed on.
    return f"unexpected {type(error).__name__} (ESC_SYNC_DEBUG=1 shows the traceback)", ExitCode.UNEXPECTED
