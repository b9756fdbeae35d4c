"""Migrations are the schema: run them (not create_all) on SQLite and PostgreSQL, round trip included."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from etl.store.db import make_engine
from etl.store.migrate import current_revision, downgrade, head_revision, upgrade
from etl.store.models import Base

TABLES = {
    "careers",
    "quarantine",
    "watermarks",
    "badges",
    "persons",
    "cards",
    "qr_images",
    "exports",
    "api_tokens",
    "api_audit",
    "escn_clock",
    "partition_locks",
    "router_pace",
}


def test_round_trip_and_models_match_migrations(state_url: str) -> None:
    engine = make_engine(state_url)
    try:
        upgrade(engine)
        assert current_revision(engine) == head_revision()
        assert set(inspect(engine).get_table_names()) >= TABLES
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert diff == [], f"models and migrations disagree: {diff}"

        downgrade(engine, "base")
        assert current_revision(engine) is None
        assert not TABLES & set(inspect(engine).get_table_names())

        upgrade(engine)
        assert set(inspect(engine).get_table_names()) >= TABLES
    finally:
        engine.dispose()
