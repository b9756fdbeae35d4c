"""One partition, one writer (issue 12): the partition lock on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from contextlib import AbstractContextManager

import pytest
from sqlalchemy import Engine, insert

from etl.store.locks import PartitionBusy, partition_lock
from etl.store.models import PartitionLock, utcnow

OVER: set[str] = set()  # the runs Dagster reports as ended, in these tests


def command(engine: Engine, key: str, run_id: str) -> AbstractContextManager[None]:
    """A command's claim for its whole run (`esc-sync materialize`)."""
    return partition_lock(engine, key, run_id, OVER.__contains__, whole_run=True)


def step(engine: Engine, key: str, run_id: str) -> AbstractContextManager[None]:
    """A step's claim in a run the daemon launched (no command around it)."""
    return partition_lock(engine, key, run_id, OVER.__contains__)


def test_a_second_writer_is_refused_with_the_holder_named(state_engine: Engine) -> None:
    with command(state_engine, "2025|unife", "run-aaaaaaaa-1"):
        with pytest.raises(PartitionBusy) as busy, command(state_engine, "2025|unife", "run-b"):
            pass  # pragma: no cover
        message = str(busy.value)
        assert "partition 2025|unife is being run by run run-aaaa" in message
        assert f"process {os.getpid()} on {socket.gethostname()}" in message and "\n" not in message
        with command(state_engine, "2024|unife", "run-bbbbbbbb-2"):  # another partition: free
            pass
    with command(state_engine, "2025|unife", "run-cccccccc-3"):  # released at the end
        pass


def test_a_runs_steps_re_enter_the_lock_the_command_took_for_the_run(state_engine: Engine) -> None:
    with command(state_engine, "2025|unife", "run-dddddddd-4"):
        with command(state_engine, "2025|unife", "run-dddddddd-4"):  # a step of that run
            pass
        with command(state_engine, "2025|unife", "run-dddddddd-4"):  # the next step
            pass
        # still held: the steps did not release it
        with pytest.raises(PartitionBusy), command(state_engine, "2025|unife", "run-e"):
            pass  # pragma: no cover
    with command(state_engine, "2025|unife", "run-e"):  # released with the run
        pass


def test_the_lock_of_a_dead_process_is_taken_over(state_engine: Engine) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    pid = int(dead.stdout)
    with state_engine.begin() as conn:  # left behind by a run that was SIGKILLed
        conn.execute(
            insert(PartitionLock).values(
                partition_key="2025|unife", run_id="dead-run", pid=pid, host=socket.gethostname(),
                acquired_at=utcnow(),
            )
        )  # fmt: skip
    with command(state_engine, "2025|unife", "run-new"):
        pass


def test_a_daemon_runs_steps_share_its_claim_from_any_process_until_the_run_is_over(
    state_engine: Engine,
) -> None:
    """Steps of one run execute in several processes at once (multiprocess executor, Celery workers):
    they share the run's claim; another run is refused until Dagster says the first is over."""
    OVER.clear()
    with (
        step(state_engine, "2025|unife", "run-ffffffff-6"),
        step(state_engine, "2025|unife", "run-ffffffff-6"),
    ):
        pass  # two steps of the run at once (the claim is not per process)
    with pytest.raises(PartitionBusy) as busy, step(state_engine, "2025|unife", "run-g"):
        pass  # pragma: no cover
    assert "run run-ffff (its steps on" in str(busy.value)
    with pytest.raises(PartitionBusy), command(state_engine, "2025|unife", "run-h"):
        pass  # pragma: no cover
    OVER.add("run-ffffffff-6")  # succeeded, or failed by run monitoring after its worker died
    with step(state_engine, "2025|unife", "run-g"):
        pass
    OVER.add("run-g")
    with command(state_engine, "2025|unife", "run-h"):  # noqa: SIM117 (the refusal inside the claim)
        with pytest.raises(PartitionBusy), step(state_engine, "2025|unife", "run-i"):
            pass  # pragma: no cover
