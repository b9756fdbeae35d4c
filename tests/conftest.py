"""Shared fixtures: real SQLite files and a real PostgreSQL (a throw-away database per test).

PostgreSQL tests use ESC_SYNC_TEST_PG_URL (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test).
Without it they skip, unless ESC_SYNC_REQUIRE_PG=1 (CI), where a missing server fails them."""

from __future__ import annotations

import datetime as dt
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from etl.config import Settings, parse_settings
from etl.demo.config import demo_config_toml
from etl.resources.runtime import Runtime
from etl.store.db import make_engine
from etl.store.migrate import upgrade

PG_URL = os.environ.get("ESC_SYNC_TEST_PG_URL")
NOW = dt.datetime(2026, 11, 2, 9, 30)


def _pg_or_skip() -> str:
    if PG_URL:
        return PG_URL
    if os.environ.get("ESC_SYNC_REQUIRE_PG"):
        pytest.fail("ESC_SYNC_REQUIRE_PG is set but ESC_SYNC_TEST_PG_URL is not")
    pytest.skip("PostgreSQL not configured (set ESC_SYNC_TEST_PG_URL)")


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database, dropped afterwards."""
    base = _pg_or_skip()
    name = f"escsync_test_{uuid.uuid4().hex[:12]}"
    # a connection per statement: a pooled one may have been cut meanwhile (the fault tests cut some)
    admin = create_engine(base, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(base).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def state_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.sqlite'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def state_engine(state_url: str) -> Iterator[Engine]:
    engine = make_engine(state_url)
    upgrade(engine)
    yield engine
    engine.dispose()


def demo_settings(home: Path, database_url: str, **overrides: object) -> Settings:
    import tomllib

    raw = tomllib.loads(demo_config_toml())
    raw.update(overrides)
    return parse_settings(raw, home=home, database_url=database_url, config_path=home / "esc-sync.toml")


def make_runtime(url: str, home: Path) -> Runtime:
    """The demo settings (academic years 2024–2025) on a migrated state DB at ``url``."""
    rt = Runtime(demo_settings(home, url, academic_years={"first": 2024, "last": 2025}))
    upgrade(rt.engine)
    return rt


@pytest.fixture
def runtime(state_url: str, tmp_path: Path) -> Iterator[Runtime]:
    """SQLite and PostgreSQL: for behaviour that goes through SQL."""
    rt = make_runtime(state_url, tmp_path)
    yield rt
    rt.dispose()


@pytest.fixture
def sqlite_runtime(tmp_path: Path) -> Iterator[Runtime]:
    """SQLite only: for checks that do not depend on the database (keeps the suite fast)."""
    rt = make_runtime(f"sqlite:///{tmp_path / 'state.sqlite'}", tmp_path)
    yield rt
    rt.dispose()


@pytest.fixture
def broker() -> str:
    """The Celery broker of the deployment tests (RabbitMQ on loopback unless ESC_SYNC_TEST_BROKER_URL)."""
    from etl.deploy.env import DEFAULT_BROKER
    from etl.deploy.processes import check_broker
    from etl.errors import EscSyncError

    url = os.environ.get("ESC_SYNC_TEST_BROKER_URL") or DEFAULT_BROKER
    try:
        check_broker(url, timeout_s=3)
    except EscSyncError as e:
        if os.environ.get("ESC_SYNC_REQUIRE_BROKER"):
            pytest.fail(f"ESC_SYNC_REQUIRE_BROKER is set: {e}")
        pytest.skip(str(e))
    return url


@pytest.fixture
def dagster_pg(pg_url: str) -> Iterator[str]:
    """A second fresh database, for Dagster's own storage."""
    from tests.deployment import fresh_database

    with fresh_database(pg_url, "escsync_dagster", driver="postgresql") as url:
        yield url
