"""Step retries for transient failures, in a deployment: a state DB connection lost, Esse3 or the Router
unreachable, the partition briefly held by another run, a disk full. Dagster runs the step again after
a wait (``RetryRequested``); a permanent failure (a refused key, a missing table, a held mass deletion,
a bug) fails the step at once. The command line keeps failing fast: its operator is there to see it."""

from __future__ import annotations

import errno
import functools
from collections.abc import Callable
from typing import Any, TypeVar

from dagster import AssetExecutionContext, RetryRequested
from sqlalchemy.exc import DBAPIError, OperationalError

from etl.config import Settings
from etl.errors import EscSyncError

STEP_RETRIES = 4  # waits of 5, 10, 20, 40 s: a database restart or a short outage is ridden out
_TRANSIENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO}

R = TypeVar("R")


def is_transient(error: BaseException) -> bool:
    if isinstance(error, EscSyncError):
        return error.transient
    if isinstance(error, OperationalError) or (
        isinstance(error, DBAPIError) and error.connection_invalidated
    ):
        return True  # the state DB went away (Esse3's errors arrive as EscSyncErrors)
    return isinstance(error, OSError) and error.errno in _TRANSIENT_ERRNOS


def retry_transient(settings: Settings) -> Callable[[Callable[..., R]], Callable[..., R]]:
    """Wraps an asset's function (keeps its signature: Dagster reads the resource parameters)."""

    def wrap(fn: Callable[..., R]) -> Callable[..., R]:
        @functools.wraps(fn)
        def step(context: AssetExecutionContext, **resources: Any) -> R:
            try:
                return fn(context, **resources)
            except Exception as e:
                if settings.deploy is None or not is_transient(e):
                    raise
                wait = 5 * 2 ** min(context.retry_number, 5)
                context.log.warning(f"transient failure ({type(e).__name__}): retrying the step in {wait} s")
                raise RetryRequested(max_retries=STEP_RETRIES, seconds_to_wait=wait) from e

        return step

    return wrap
