"""Alembic environment: the URL comes from the caller (etl.store.migrate) or ESC_SYNC_DATABASE_URL."""

from __future__ import annotations

from typing import Any

from alembic import context
from sqlalchemy import create_engine

from etl.config import default_database_url, home_from_env
from etl.store.models import Base

config = context.config


def _url() -> str:
    import os

    return (
        config.get_main_option("sqlalchemy.url")
        or os.environ.get("ESC_SYNC_DATABASE_URL")
        or default_database_url(home_from_env())
    )


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=Base.metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_engine(_url())
    with engine.connect() as conn:
        _run(conn)
    engine.dispose()


def _run(connection: Any) -> None:
    # Batch mode: SQLite cannot ALTER most things, so Alembic rebuilds tables there.
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
