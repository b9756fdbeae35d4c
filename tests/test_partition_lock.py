"""One partition, one writer (issue 12): the partition lock on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
from sqlalchemy import Engine, insert

from etl.store.locks import PartitionBusy, partition_lock
from etl.store.models import PartitionLock, utcnow


def test_a_second_writer_is_refused_with_the_holder_named(state_engine: Engine) -> None:
    with partition_lock(state_engine, "2025|unife", "run-aaaaaaaa-1"):
        with pytest.raises(PartitionBusy) as busy, partition_lock(state_engine, "2025|unife", "run-b"):
            pass  # pragma: no cover
        message = str(busy.value)
        assert "partition 2025|unife is being run by run run-aaaa" in message
        assert f"process {os.getpid()} on {socket.gethostname()}" in message and "\n" not in message
        with partition_lock(state_engine, "2024|unife", "run-bbbbbbbb-2"):  # another partition: free
            pass
    with partition_lock(state_engine, "2025|unife", "run-cccccccc-3"):  # released at the end
        pass


def test_a_runs_steps_re_enter_the_lock_the_command_took_for_the_run(state_engine: Engine) -> None:
    with partition_lock(state_engine, "2025|unife", "run-dddddddd-4"):
        with partition_lock(state_engine, "2025|unife", "run-dddddddd-4"):  # a step of that run
            pass
        with partition_lock(state_engine, "2025|unife", "run-dddddddd-4"):  # the next step
            pass
        # still held: the steps did not release it
        with pytest.raises(PartitionBusy), partition_lock(state_engine, "2025|unife", "run-e"):
            pass  # pragma: no cover
    with partition_lock(state_engine, "2025|unife", "run-e"):  # released with the run
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
    with partition_lock(state_engine, "2025|unife", "run-new"):
        pass
