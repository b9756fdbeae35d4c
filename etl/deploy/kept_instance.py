"""One Dagster instance per process and instance reference.

Dagster builds a new instance from a reference wherever one crosses a process boundary: for every step
a Celery worker runs (dagster-celery's task), for every sensor tick the code server evaluates. Each
new one sets up three storages that check their tables on PostgreSQL and open their own connections:
~65 CPU-ms of the machine, PostgreSQL's included. The processes that receive references keep one
instance per reference instead (the storages keep their connection, etl/deploy/storage.py)."""

from __future__ import annotations

import threading

from dagster import DagsterInstance
from dagster._core.instance.ref import InstanceRef
from dagster._serdes import serialize_value

_kept: dict[str, DagsterInstance] = {}
_lock = threading.Lock()  # the code server evaluates sensors in threads


def kept_instance(ref: InstanceRef) -> DagsterInstance:
    key = serialize_value(ref)
    with _lock:
        if key not in _kept:
            _kept[key] = DagsterInstance.from_ref(ref)
        return _kept[key]
