"""Schemathesis against the API's own OpenAPI document, over real HTTP with a valid token: generated
requests (valid and invalid parameters) never get a 5xx, and responses conform to the document.

The document is loaded at collection from an app built without a database (schemathesis' lazy
``from_fixture`` loader does not work with pytest 9); the module's server must serve the same one."""

from __future__ import annotations

import datetime as dt
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from etl.api.app import create_app
from etl.api.tokens import create_token
from etl.store.db import make_engine
from etl.store.migrate import upgrade
from tests.api_seed import LiveServer, export_rows, seed_cards, seed_export
from tests.fixtures.world import demo_settings


def _document() -> dict:
    home = Path(tempfile.gettempdir())
    app = create_app(demo_settings(home, "sqlite://"))  # no connection is made to build the document
    return app.openapi()


def _without_security(document: dict) -> dict:
    """The document as the tests call it: every call carries a valid token (401/403 are tested in
    test_api_matrix). Left in, the bearer scheme makes schemathesis generate "missing Authorization"
    as invalid data, which the token the test adds makes valid: a false "invalid data accepted"."""
    paths = {
        path: {method: {k: v for k, v in op.items() if k != "security"} for method, op in item.items()}
        for path, item in document["paths"].items()
    }
    return {**document, "paths": paths}


DOCUMENT = _document()
schema = schemathesis.openapi.from_dict(_without_security(DOCUMENT))


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    home = tmp_path_factory.mktemp("schemathesis")
    db_url = f"sqlite:///{home / 'state.sqlite'}"
    config = demo_settings(home, db_url)
    engine = make_engine(db_url)
    upgrade(engine)
    cards = seed_cards(engine, config, "unife", 5)
    seed_export(engine, home / "exports", "unife-2025-full", "unife", 2025, export_rows(config, cards))
    token = create_token(
        engine, name="schemathesis", scopes=["exports:read", "badges:read"], institutions=["unife", "unipa"],
        known_institutions=config.codes, rate_per_minute=1_000_000,
    ).token  # fmt: skip
    app = create_app(config, engine, feed_settle_seconds=0, today=lambda: dt.date(2026, 1, 15))
    with LiveServer(app) as server:
        yield server.url, {"Authorization": f"Bearer {token}"}
    engine.dispose()


def test_served_document_is_the_tested_one(api: tuple[str, dict[str, str]]) -> None:
    assert httpx.get(f"{api[0]}/openapi.json", trust_env=False).json() == DOCUMENT


@schema.parametrize()
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors_and_conforming_responses(
    api: tuple[str, dict[str, str]], case: schemathesis.Case
) -> None:
    url, headers = api
    case.call_and_validate(base_url=url, headers=headers)
