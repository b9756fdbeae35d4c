"""Dagster's PostgreSQL event log and run storage, keeping their connection (named in ``dagster.yaml``).

dagster-postgres opens a new connection for every statement (``NullPool``), so that many short-lived
instances never pile up idle connections. But a run's process and a Celery worker write dozens of
events a step: connecting took about a fifth of a worker's CPU, and PostgreSQL started a backend
each time. This storage keeps one connection per process, opens more (never waiting, as before)
only while several threads write at once, and checks the kept one before use (after a server
restart it reconnects instead of failing a step). The run storage is kept alike: a run's process
opened some 30 connections to it for a run carrying one career (issue 25). So is the schedule storage:
the daemon's sensor, schedule and automation loops read it every second or so, and an idle deployment
started four PostgreSQL backends a second for them (~0.03 CPU-s a second, a third of its idle CPU).
The event log and run storage also remember which columns and tables they have: Dagster asks PostgreSQL's
catalog again at every read of runs and of assets' records, and whether a table exists at every asset
event, check and concurrency claim (18 catalog searches a partition run, ~0.1 CPU-s of its ~0.55).
Columns and tables change only with `dagster instance migrate` (`esc-sync deploy init`), after which the
processes are restarted; a table found missing is asked about again. And the event log sends no NOTIFY
after each event: nothing LISTENs to it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dagster._core.events import ASSET_CHECK_EVENTS, ASSET_EVENTS
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.event_log import SqlEventLogStorageTable
from dagster._serdes import ConfigurableClassData
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage
from dagster_postgres.utils import create_pg_engine, get_token_provider_from_config, pg_url_from_config

KEPT_CONNECTIONS = 1  # per process; a thread finding it busy opens its own for the moment it writes
RECYCLE_S = 600  # below the idle timeouts of the usual PostgreSQL poolers and firewalls


class _KeptConnection:
    """Replaces dagster-postgres's NullPool engine, once the storage has checked its tables."""

    _engine: Any

    def __init__(
        self,
        postgres_url: str,
        should_autocreate_tables: bool = True,
        inst_data: ConfigurableClassData | None = None,
        token_provider: Any = None,
    ) -> None:
        self._columns: dict[str, bool] = {}  # "table.column" → whether it exists, asked once
        self._tables: set[str] = set()  # tables found to exist
        super().__init__(postgres_url, should_autocreate_tables, inst_data, token_provider)  # type: ignore[call-arg]
        self._engine.dispose()
        self._engine = create_pg_engine(
            postgres_url, token_provider, isolation_level="AUTOCOMMIT", pool_size=KEPT_CONNECTIONS,
            max_overflow=-1, pool_recycle=RECYCLE_S, pool_pre_ping=True,
        )  # fmt: skip

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
    ) -> Any:
        return cls(
            inst_data=inst_data,
            postgres_url=pg_url_from_config(config_value),
            should_autocreate_tables=config_value.get("should_autocreate_tables", True),
            token_provider=get_token_provider_from_config(config_value),
        )


class PooledPostgresEventLogStorage(_KeptConnection, PostgresEventLogStorage):
    def store_event(self, event: EventLogEntry) -> None:
        # dagster-postgres's, without the NOTIFY it sends after every event: no Dagster process has
        # LISTENed since its event watcher polls (kept upstream "to support version skew"; a
        # deployment runs one pinned version). A statement and a notification queue write fewer for
        # each of a partition run's 68 events.
        with self._connect() as conn:
            insert = self.prepare_insert_event(event).returning(SqlEventLogStorageTable.c.id)
            event_id = int(conn.execute(insert).scalar_one())
        dagster_event = event.dagster_event
        if dagster_event is None:
            return
        if dagster_event.event_type in ASSET_EVENTS and dagster_event.asset_key:
            with self.index_transaction() as conn:
                self._store_asset_event_tags(conn, [event], [event_id])
                self._store_asset_event(conn, event, event_id)
        if dagster_event.event_type in ASSET_CHECK_EVENTS:
            self.store_asset_check_event(event, event_id)

    def has_table(self, table_name: str) -> bool:
        if table_name not in self._tables:
            if not super().has_table(table_name):
                return False
            self._tables.add(table_name)
        return True

    def _has_asset_key_col_on_connection(self, conn: Any, column_name: str) -> bool:
        # Dagster asks the catalog at every read of assets' records (the UI's, the sensors', the runs')
        key = f"asset_keys.{column_name}"
        if key not in self._columns:
            self._columns[key] = super()._has_asset_key_col_on_connection(conn, column_name)
        return self._columns[key]


class PooledPostgresRunStorage(_KeptConnection, PostgresRunStorage):
    def has_run_stats_index_cols(self) -> bool:
        # Dagster asks the catalog for every read of runs and every change of a run's state: the
        # queue's loop alone twice a second
        if "runs.start_time" not in self._columns:
            self._columns["runs.start_time"] = super().has_run_stats_index_cols()
        return self._columns["runs.start_time"]


class PooledPostgresScheduleStorage(_KeptConnection, PostgresScheduleStorage):
    pass
