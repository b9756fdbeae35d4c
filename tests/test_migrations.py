"""Migrations are the schema: run them (not create_all) on SQLite and PostgreSQL, round trip included."""

from __future__ import annotations

import re

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect

from etl.store.bulk import PLANNER_COLUMNS
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


def test_qr_images_analyse_a_small_sample(state_engine: Engine) -> None:
    """The export refreshes qr_images' statistics after each partition: a sample of the default 30,000
    wide rows cost 150 ms at 100,000 cards; migration 0012 keeps it to 3,000."""
    if state_engine.dialect.name != "postgresql":
        return  # SQLite keeps no column statistics
    notices: list[str] = []
    with state_engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO qr_images (escn, institution, academic_year, payload, png, svg, rendered_at)"
            " SELECT 'e' || i, 'unife', 2025, 'https://s.esc-r.eu/e' || i, '\\x00', '\\x00', now()"
            " FROM generate_series(1, 6000) AS i"
        )
        raw = conn.connection.driver_connection
        raw.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        conn.exec_driver_sql(f"ANALYZE VERBOSE qr_images ({', '.join(PLANNER_COLUMNS['qr_images'])})")
    sampled = [int(m.group(1)) for n in notices if (m := re.search(r"(\d+) rows in sample", n))]
    assert sampled == [3000], notices
