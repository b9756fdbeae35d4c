"""Where a deployment's URLs come from: the environment only (they may hold passwords)."""

from __future__ import annotations

import os

from etl.errors import ConfigError

DAGSTER_PG_ENV = "ESC_SYNC_DAGSTER_PG_URL"  # Dagster's run, event and schedule storage
BROKER_ENV = "ESC_SYNC_BROKER_URL"
DEFAULT_BROKER = "pyamqp://guest@127.0.0.1:5672//"  # RabbitMQ on loopback, its guest account


def dagster_pg_url(environ: dict[str, str] | os._Environ[str] = os.environ) -> str:
    """Dagster's storage URL, in the form dagster-postgres (psycopg2) reads."""
    url = environ.get(DAGSTER_PG_ENV, "")
    if not url:
        raise ConfigError(
            f"${DAGSTER_PG_ENV} is not set: a deployment keeps Dagster's runs and events in PostgreSQL "
            "(e.g. postgresql://dagster:PASSWORD@db:5432/dagster)"
        )
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.split("+")[0] not in ("postgresql", "postgres"):
        raise ConfigError(f"${DAGSTER_PG_ENV}: not a PostgreSQL URL (postgresql://user:password@host/db)")
    return f"postgresql+psycopg2://{rest}"


def broker_url(environ: dict[str, str] | os._Environ[str] = os.environ) -> str:
    """The AMQP broker. Not Redis: Celery on Redis hands a killed worker's unacknowledged step to
    another worker only after its visibility timeout (an hour by default), and a step running longer
    than that timeout is handed out twice while it still runs; RabbitMQ does both right."""
    url = environ.get(BROKER_ENV) or DEFAULT_BROKER
    scheme = url.partition("://")[0]
    if scheme not in ("amqp", "amqps", "pyamqp"):
        raise ConfigError(
            f"${BROKER_ENV}: {scheme or 'no'} broker, use RabbitMQ (amqp://user:password@host:5672//): "
            "on Redis a killed worker's step waits for the visibility timeout before it is redone"
        )
    return url


def redacted(url: str) -> str:
    """A URL fit for a log line: no password."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not at:
        return url
    user = creds.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{host}" if ":" in creds else f"{scheme}{sep}{user}@{host}"
