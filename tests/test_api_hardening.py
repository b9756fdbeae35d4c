"""REST service hardening (issue 11, item 9), over real HTTP: no 5xx from any query or header value,
HEAD on downloads, links never built from the Host header, Swagger UI without a CDN, QR images
revalidated rather than cached blindly."""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Iterator
from dataclasses import replace

import httpx
import pytest
from sqlalchemy import Engine, select

from etl.api.app import create_app
from etl.api.tokens import create_token
from etl.store.db import make_engine
from etl.store.migrate import upgrade
from etl.store.models import ApiAudit
from tests.api_seed import LiveServer, SeededCard, export_rows, seed_cards, seed_export
from tests.fixtures.world import demo_settings

PUBLIC = "https://esc.unife.example/api/"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, SeededCard, Engine, int]]:
    home = tmp_path_factory.mktemp("hardening")
    db_url = f"sqlite:///{home / 'state.sqlite'}"
    settings = replace(demo_settings(home, db_url), api_public_url=PUBLIC)
    engine = make_engine(db_url)
    upgrade(engine)
    cards = seed_cards(engine, settings, "unife", 3)
    seed_export(engine, home / "exports", "unife-2025-full", "unife", 2025, export_rows(settings, cards))
    created = create_token(
        engine, name="t", scopes=["exports:read", "badges:read"], institutions=["unife"],
        known_institutions=settings.codes,
    )  # fmt: skip
    token = created.token
    with LiveServer(
        create_app(settings, engine, feed_settle_seconds=0, today=lambda: dt.date(2026, 1, 15))
    ) as server:
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=server.url, headers=headers, trust_env=False, timeout=10) as http:
            yield http, cards[0], engine, created.id
    engine.dispose()


@pytest.fixture
def api(world: tuple[httpx.Client, SeededCard, Engine, int]) -> tuple[httpx.Client, str]:
    return world[0], world[1].escn


@pytest.mark.parametrize(
    "since", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "2025-13-01T00:00:00Z", "1e9"]
)
def test_since_out_of_range_is_a_named_4xx(api: tuple[httpx.Client, str], since: str) -> None:
    http, _ = api
    r = http.get("/v1/exports", params={"since": since})
    assert r.status_code == 422 and r.json()["error"]["param"] == "since", r.text


@pytest.mark.parametrize(
    "header", ["bytes=" + "9" * 5000 + "-", "bytes=-" + "9" * 5000, "bytes=0-" + "9" * 5000, "bytes=1-0"]
)
def test_absurd_ranges_never_500(api: tuple[httpx.Client, str], header: str) -> None:
    http, _ = api
    r = http.get("/v1/exports/unife-2025-full/parquet", headers={"Range": header})
    assert r.status_code in (200, 416), r.status_code


def test_head_on_downloads(api: tuple[httpx.Client, str]) -> None:
    http, _ = api
    for which in ("parquet", "zip"):
        get = http.get(f"/v1/exports/unife-2025-full/{which}")
        head = http.head(f"/v1/exports/unife-2025-full/{which}")
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-length"] == str(len(get.content))
        assert head.headers["etag"] == get.headers["etag"]


def test_links_come_from_the_configured_public_url_not_the_host_header(api: tuple[httpx.Client, str]) -> None:
    http, _ = api
    r = http.get("/v1/exports", headers={"Host": "attacker.example"})
    urls = [e[w]["url"] for e in r.json()["exports"] for w in ("parquet", "zip")]
    assert urls and all(u.startswith(PUBLIC + "v1/exports/") for u in urls)
    feed = http.get("/v1/feed", params={"university": "unife", "qr": "link"}, headers={"Host": "evil.test"})
    items = feed.json()["items"]
    assert items and all(i["qr_url"].startswith(PUBLIC) for i in items)


def test_swagger_ui_is_served_without_a_cdn(api: tuple[httpx.Client, str]) -> None:
    http, _ = api
    page = http.get("/docs")
    assert page.status_code == 200
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert assets and all(a.startswith("/docs/static/") for a in assets), assets
    for a in assets:
        assert http.get(a).status_code == 200
    assert "swagger" in http.get("/docs/static/swagger-ui-bundle.js").text[:5000].lower()


def test_qr_images_are_revalidated_not_cached_blindly(api: tuple[httpx.Client, str]) -> None:
    http, escn = api
    r = http.get(f"/v1/cards/{escn}/qr.png")
    assert r.status_code == 200 and "no-cache" in r.headers["cache-control"]
    assert "max-age=3600" not in r.headers["cache-control"]
    again = http.get(f"/v1/cards/{escn}/qr.png", headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code == 304 and again.content == b""


def test_every_read_is_audited_in_batches(world: tuple[httpx.Client, SeededCard, Engine, int]) -> None:
    """Badges (JSON, HTML, PDF), QR images, the feed, lists and downloads: each read leaves a row with
    the token, the university, what was read and when (issue 11, item 7)."""
    http, card, engine, token_id = world
    student = f"/v1/universities/unife/students/{card.matricola}"
    reads = {
        f"/v1/cards/{card.escn}/badge.json": 200, f"/v1/cards/{card.escn}/badge.html": 200,
        f"/v1/cards/{card.escn}/badge.pdf": 200, f"/v1/cards/{card.escn}/qr.png": 200,
        f"/v1/cards/{card.escn}/qr.svg": 200, f"{student}/badge": 200, f"{student}/qr.png": 200,
        "/v1/feed?university=unife": 200, "/v1/exports?university=unife": 200,
        "/v1/exports/unife-2025-full/zip": 200, "/v1/universities/unipa/students/1/badge": 404,
    }  # fmt: skip
    started = dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(seconds=1)
    for path, status in reads.items():
        assert http.get(path).status_code == status, path
    deadline = time.monotonic() + 5
    while True:
        with engine.connect() as conn:
            rows = conn.execute(select(ApiAudit.__table__).where(ApiAudit.at >= started)).all()
        if len(rows) >= len(reads) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    by_path = {r.resource: r for r in rows}
    # A list or feed row names the query as the route validated it, with its defaults.
    by_path |= {r.resource.partition("&")[0]: r for r in rows}
    for path, status in reads.items():
        resource = path.removeprefix("/v1/exports/").removesuffix("/zip")
        row = by_path.get(resource) or by_path.get(path)
        assert row is not None, path
        assert (row.token_id, row.status) == (token_id, status), path
        assert row.institution == ("unipa" if "unipa" in path else "unife"), path
