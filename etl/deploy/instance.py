"""The deployment's Dagster instance (``dagster.yaml``) and workspace, written by `esc-sync deploy init`.

Everything is Dagster's own machinery: PostgreSQL storage, the daemon's run queue with a global limit
and one per university, run monitoring (runs whose worker died are failed and their pool slots freed),
run retries (a failed run is retried once whole; step failures are not, so the two never multiply),
and the ``esc_router`` pool bounding Router steps across every worker."""

from __future__ import annotations

from pathlib import Path

from etl.assets.router_calls import ROUTER_POOL
from etl.batches import BATCH_KIND, KIND_TAG, UNIVERSITY_TAG
from etl.config import DeploySettings
from etl.deploy.env import DAGSTER_PG_ENV
from etl.deploy.launcher import MonitoredRunLauncher
from etl.deploy.storage import (
    PooledPostgresEventLogStorage,
    PooledPostgresRunStorage,
    PooledPostgresScheduleStorage,
)
from etl.files import write_atomically

# Dagster tags every run of a partitioned job with its partition, and of a multi-partitioned one with
# each dimension's value.
PARTITION_TAG = "dagster/partition"
INSTITUTION_TAG = "dagster/partition/institution"
MAX_RUNTIME_S = 6 * 3600


def instance_yaml(deploy: DeploySettings) -> str:
    return f"""\
# Written by `esc-sync deploy init` (README "Production"). No secret here: the storage URL is read
# from ${DAGSTER_PG_ENV}, the broker's from $ESC_SYNC_BROKER_URL, the Router keys from theirs.
telemetry:
  enabled: false
# dagster-postgres's storages, keeping their connection (etl/deploy/storage.py)
run_storage:
  module: {PooledPostgresRunStorage.__module__}
  class: {PooledPostgresRunStorage.__name__}
  config:
    postgres_url:
      env: {DAGSTER_PG_ENV}
event_log_storage:
  module: {PooledPostgresEventLogStorage.__module__}
  class: {PooledPostgresEventLogStorage.__name__}
  config:
    postgres_url:
      env: {DAGSTER_PG_ENV}
schedule_storage:
  module: {PooledPostgresScheduleStorage.__module__}
  class: {PooledPostgresScheduleStorage.__name__}
  config:
    postgres_url:
      env: {DAGSTER_PG_ENV}
# A step's stdout and stderr stay in its worker's log: capturing them into files costs every step
# two `tail` and two Python watcher processes.
compute_logs:
  module: dagster.core.storage.noop_compute_log_manager
  class: NoOpComputeLogManager
run_coordinator:
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator
  config:
    dequeue_interval_seconds: 1
# Dagster's default launcher with a health check: a run whose process is gone is failed by run
# monitoring within a poll, and run retries launch it again (etl/deploy/launcher.py)
run_launcher:
  module: {MonitoredRunLauncher.__module__}
  class: {MonitoredRunLauncher.__name__}
run_monitoring:
  enabled: true
  # a run process starts in seconds: one that has not within a minute (its code server was killed)
  # is failed, and run retries launch it again
  start_timeout_seconds: 60
  cancel_timeout_seconds: 60
  # a backstop for a run that hangs alive: no partition's run takes this long
  max_runtime_seconds: {MAX_RUNTIME_S}
  poll_interval_seconds: 20
  # a run that ended badly must not hold an {ROUTER_POOL} slot
  free_slots_after_run_end_seconds: 30
run_retries:
  enabled: true
  max_retries: 2
  # a step's own failure is not retried as a whole run (steps have their own retry policy)
  retry_on_asset_or_op_failure: false
concurrency:
  runs:
    max_concurrent_runs: {deploy.max_concurrent_runs}
    tag_concurrency_limits:
      # a university's runs in flight: its Router key is shared by all of them
      - key: {INSTITUTION_TAG}
        value:
          applyLimitPerUniqueValue: true
        limit: {deploy.runs_per_university}
      # the same, counting a university's batches (etl/batches.py) with its sensors' partition runs
      - key: {UNIVERSITY_TAG}
        value:
          applyLimitPerUniqueValue: true
        limit: {deploy.runs_per_university}
      # batches in flight: one per worker; the rest wait here, not in run processes polling Celery
      - key: {KIND_TAG}
        value: {BATCH_KIND}
        limit: {deploy.batch_runs}
      # one partition, one run: a newer change waits in the queue for the run before it
      - key: {PARTITION_TAG}
        value:
          applyLimitPerUniqueValue: true
        limit: 1
  pools:
    default_limit: {deploy.router_steps}
sensors:
  use_threads: true
  num_workers: 4
"""


CODE_MODULE, CODE_ATTRIBUTE = "etl.definitions", "defs"
LOCATION_NAME = f"{CODE_MODULE}:{CODE_ATTRIBUTE}"  # Dagster's own name for the python_module location


def workspace_yaml() -> str:
    return f"""\
# Written by `esc-sync deploy init`: the one code location, configured from ESC_SYNC_CONFIG/HOME.
load_from:
  - python_module:
      module_name: {CODE_MODULE}
      attribute: {CODE_ATTRIBUTE}
"""


def served_workspace_yaml(socket: Path) -> str:
    """The workspace of `serve`'s daemon and webserver: the code location served by `serve`'s own code
    server. Loaded from a module instead, the daemon would start a fresh code server (imports and
    definitions, ~5 CPU-s) every minute to pick up code changes: most of an idle deployment's CPU."""
    return f"""\
# Written by `esc-sync serve` at its start: the code location its code server serves.
load_from:
  - grpc_server:
      socket: {socket}
      location_name: {LOCATION_NAME}
"""


def write_instance(dagster_home: Path, deploy: DeploySettings) -> list[Path]:
    dagster_home.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = dagster_home / "dagster.yaml"
    write_atomically(path, instance_yaml(deploy).encode())  # 0600, like every file esc-sync writes
    return [path, write_workspace(dagster_home)]


def write_workspace(dagster_home: Path) -> Path:
    """The workspace file (the code location is the installed package: no path to a checkout), for
    `esc-sync ui` and Dagster's own CLI; `serve` writes its own, naming its code server."""
    dagster_home.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = dagster_home / "workspace.yaml"
    write_atomically(path, workspace_yaml().encode())
    return path
