"""Tags esc-sync puts on the Dagster runs it executes in a process of its own (the CLI's backfills, a
batch's partitions): which process runs them, so that a run whose process is gone is found and failed
(etl.orchestrate.reap_dead_runs, and run monitoring through etl.deploy.launcher)."""

PID_TAG, HOST_TAG = "esc_sync/pid", "esc_sync/host"
