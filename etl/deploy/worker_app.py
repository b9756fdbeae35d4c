"""The Celery app of `esc-sync worker` (``celery -A etl.deploy.worker_app worker``) and of the Celery
executor that sends it steps: one configuration, so both sides speak to the same broker and queue.

A step's message is acknowledged only when the step has finished (``task_acks_late``) and handed
back to the broker if the worker process dies (``task_reject_on_worker_lost``): a worker killed
mid-step has its step run again by another worker. Running a step twice is safe: every Router call is
recorded before and after, and the partition's lock is re-entered by the same run.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from celery.app import trace
from dagster_celery import core_execution_loop, defaults, tasks
from dagster_celery.config import dict_wrapper
from dagster_celery.make_app import make_app

from etl.deploy.env import broker_url
from etl.deploy.kept_instance import kept_instance

QUEUE_ENV = "ESC_SYNC_CELERY_QUEUE"  # one queue per deployment when several share a broker


def queue() -> str:
    return os.environ.get(QUEUE_ENV) or "dagster"  # dagster-celery's default queue


CELERY_CONFIG: dict[str, Any] = {
    "task_acks_late": True,
    "task_reject_on_worker_lost": True,
    "worker_prefetch_multiplier": 1,  # a worker holds only the step it runs: the others stay free
    "task_default_queue": queue(),  # where the executor sends steps
    "broker_connection_retry_on_startup": True,
    # A solo worker cannot answer AMQP heartbeats while a step runs, and the broker would drop it (and
    # hand its step to another worker) mid-step: no heartbeats, TCP keepalive instead, which still
    # tells the broker within about two minutes that a worker's machine is gone.
    "broker_heartbeat": 0,
    "broker_transport_options": {
        **defaults.broker_transport_options,  # dagster-celery's publish retries
        "socket_settings": {socket.TCP_KEEPIDLE: 60, socket.TCP_KEEPINTVL: 10, socket.TCP_KEEPCNT: 6},
    },
    "worker_hijack_root_logger": False,
    # A step's Dagster log lines go to the worker's stderr as Dagster wrote them (with their own level):
    # Celery would otherwise re-log every one of them as a WARNING of its own.
    "worker_redirect_stdouts": False,
}

# The run's coordinator looks for finished steps once a tick, 1 s in dagster-celery: a run of eight
# chained steps would idle about 4 s waiting for it. A quarter of that is a cheap poll of the broker.
core_execution_loop.TICK_SECONDS = 0.25  # type: ignore[assignment]  # an int there, read by time.sleep

# Celery logs a task's return value on success; a step's is its list of Dagster events, already in
# Dagster's storage: one line with the duration is enough.
trace.LOG_SUCCESS = "Task %(name)s[%(id)s] succeeded in %(runtime)ss"


class _KeptInstance:
    """dagster-celery's step task builds a new Dagster instance for every step: a worker keeps the one
    its steps name."""

    from_ref = staticmethod(kept_instance)


tasks.DagsterInstance = _KeptInstance  # type: ignore[misc,assignment]  # the name the step task calls from_ref on

app = make_app({"broker": broker_url(), "backend": "rpc://", "config_source": dict_wrapper(CELERY_CONFIG)})
execute_plan = tasks.create_task(app)
