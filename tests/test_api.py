"""The REST service over real HTTP (uvicorn on a loopback port): exports and downloads, the feed, badges,
tokens, errors. One seeded SQLite state DB and server serve the module; a subset runs on PostgreSQL too.
The pure pieces (ranges, cursors, rate limiter, file verification) are tested directly at the end."""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import hashlib
import io
import json
import logging
import os
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import httpx
import pyarrow.parquet as pq
import pytest
import zxingcpp
from PIL import Image
from sqlalchemy import Engine, select, update

from etl.api import files as files_module
from etl.api import hot_reads
from etl.api.app import create_app
from etl.api.auth import bearer_token
from etl.api.cli import dispatch, register
from etl.api.cursor import FeedPosition, InvalidCursor, decode_cursor, encode_cursor, start
from etl.api.errors import ApiError
from etl.api.files import FileProblem, FileVerifier
from etl.api.ranges import RangeNotSatisfiable, etag_matches, if_range_allows, parse_range
from etl.api.ratelimit import RateLimiter, retry_after_header
from etl.api.schemas import BadgeOut, FeedItemOut
from etl.api.tokens import NewToken, create_token, hash_token
from etl.config import Settings
from etl.demo.config import demo_config_toml
from etl.errors import EscSyncError
from etl.render.badge_source import display_status
from etl.render.qr import qr_payload, render_qr
from etl.store.db import make_engine
from etl.store.migrate import upgrade
from etl.store.models import ApiAudit, ApiToken, Card, Export, QrImage, utcnow
from tests.api_seed import BASE_TIME, LiveServer, SeededCard, add_card, export_rows, seed_cards, seed_export
from tests.fixtures.world import demo_settings

A, B = "unife", "unipa"
TODAY = dt.date(2026, 1, 15)
REPO = Path(__file__).resolve().parents[1]


@dataclass
class World:
    settings: Settings
    engine: Engine
    url: str
    a: list[SeededCard]  # unife: 40 cards, the last 4 without QR images; every 10th INACTIVE
    b: list[SeededCard]  # unipa: 6 cards
    current: dict[str, SeededCard]  # student scenario -> the card the API must pick
    expired: SeededCard
    pending: SeededCard
    tokens: dict[str, NewToken]


def token_for(
    engine: Engine, settings: Settings, scopes: list[str], codes: list[str], rate: int = 100_000
) -> NewToken:
    return create_token(
        engine, name=f"test {'+'.join(scopes)}", scopes=scopes, institutions=codes,
        known_institutions=settings.codes, rate_per_minute=rate,
    )  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    home = tmp_path_factory.mktemp("api")
    db_url = f"sqlite:///{home / 'state.sqlite'}"
    settings = demo_settings(home, db_url)
    engine = make_engine(db_url)
    upgrade(engine)
    a = seed_cards(
        engine, settings, A, 40, with_qr=lambda i: i < 36, same_changed_at_every=3,
        status=lambda i: "INACTIVE" if i % 10 == 9 else "ACTIVE",
    )  # fmt: skip
    b = seed_cards(engine, settings, B, 6, first_stu_id=5000)
    later = BASE_TIME + dt.timedelta(days=90)
    current = {
        # an ACTIVE card wins over a newer INACTIVE one
        "active_first": a[0],
        # only INACTIVE cards: the latest issued
        "latest": add_card(engine, settings, a[9], 90_002, status="INACTIVE", issued_at=dt.date(2025, 12, 1),
                           changed_at=later),
        # a newer ACTIVE card replaces an INACTIVE one
        "replaced": add_card(engine, settings, a[19], 90_003, status="ACTIVE", issued_at=dt.date(2025, 11, 1),
                             changed_at=later),
    }  # fmt: skip
    add_card(
        engine, settings, a[0], 90_001, status="INACTIVE", issued_at=dt.date(2025, 12, 1), changed_at=later
    )
    expired = seed_cards(engine, settings, A, 1, first_stu_id=3000, academic_year=2023)[0]
    pending = seed_cards(engine, settings, A, 1, first_stu_id=3100)[0]
    with engine.begin() as conn:  # minted and recorded, not yet confirmed by the Router
        conn.execute(update(Card).where(Card.escn == pending.escn).values(state="pending"))
    exports = home / "exports"
    day = dt.timedelta(days=1)
    for export_id, code, year, cards, kind, created in (
        ("unife-2024-bad-1", A, 2024, a[:3], "full", BASE_TIME - 9 * day),
        ("unife-2024-bad-2", A, 2024, a[:3], "full", BASE_TIME - 8 * day),
        ("unife-2024-bad-3", A, 2024, a[:3], "full", BASE_TIME - 7 * day),
        ("unife-2024-bad-4", A, 2024, a[:3], "full", BASE_TIME - 6 * day),
        ("unife-2023-old", A, 2023, a[:2], "full", BASE_TIME - 30 * day),
        ("unife-2025-full", A, 2025, a[:36], "full", BASE_TIME + day),
        ("unipa-2025-full", B, 2025, b, "full", BASE_TIME + 2 * day),
        ("unife-2025-incr", A, 2025, a[:5], "incremental", BASE_TIME + 60 * day),
    ):
        seed_export(
            engine,
            exports,
            export_id,
            code,
            year,
            export_rows(settings, cards),
            kind=kind,
            created_at=created,
        )
    with engine.begin() as conn:
        conn.execute(update(Export).where(Export.id == "unife-2023-old").values(status="expired"))
    tokens = {
        "vendor_a": token_for(engine, settings, ["exports:read"], [A]),
        "badges_a": token_for(engine, settings, ["badges:read"], [A]),
        "both_ab": token_for(engine, settings, ["exports:read", "badges:read"], [A, B]),
    }
    app = create_app(settings, engine, token_cache_seconds=0.3, feed_settle_seconds=0, today=lambda: TODAY)
    with LiveServer(app) as server:
        yield World(settings, engine, server.url, a, b, current, expired, pending, tokens)
    engine.dispose()


@pytest.fixture(scope="module")
def http(world: World) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=world.url, trust_env=False, timeout=30) as client:
        yield client


def auth(token: NewToken | str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token if isinstance(token, str) else token.token}"}


def error(r: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert set(body) == {"error"} and {"code", "message"} <= set(body["error"])
    if code:
        assert body["error"]["code"] == code, body
    return body["error"]


def wait_for(fetch: Any, count: int, timeout: float = 5.0) -> list[Any]:
    """``fetch()`` once it returns ``count`` rows (the audit of a download lands just after its body)."""
    deadline = time.monotonic() + timeout
    while len(rows := fetch()) < count and time.monotonic() < deadline:
        time.sleep(0.02)
    return rows


def decode_qr(png: bytes) -> str:
    found = zxingcpp.read_barcode(Image.open(io.BytesIO(png)), formats=zxingcpp.BarcodeFormat.QRCode)
    assert found is not None, "no QR code found"
    return found.text


def export_row(engine: Engine, export_id: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(select(Export.__table__).where(Export.id == export_id)).one()


def rows_of(engine: Engine, statement: Any) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(statement))


def audit_rows(engine: Engine, resource: str) -> list[Any]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                select(ApiAudit.__table__).where(ApiAudit.resource == resource).order_by(ApiAudit.id)
            )
        )


# --- health and authentication ------------------------------------------------------------------------


def test_health_needs_no_token(http: httpx.Client) -> None:
    r = http.get("/v1/health")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "version": r.json()["version"], "database": "ok"}
    assert r.json()["version"]


def test_openapi_documents_versioned_paths_and_bearer_auth(http: httpx.Client) -> None:
    doc = http.get("/openapi.json").json()
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert "/v1/exports/{export_id}/parquet" in doc["paths"] and "/v1/feed" in doc["paths"]
    assert all(p.startswith("/v1/") for p in doc["paths"])
    assert "security" not in doc["paths"]["/v1/health"]["get"]
    assert doc["paths"]["/v1/feed"]["get"]["security"] == [{"bearer": []}]
    assert http.get("/docs").status_code == 200


@pytest.mark.parametrize(
    "header",
    [
        None,
        "Basic dXNlcjpwYXNz",
        "Bearer",
        "Bearer not-a-token",
        "Bearer escs_" + "x" * 42,  # one character short
        "Bearer escs_" + "A" * 43,  # well formed, unknown
        "bearer escs_" + "B" * 43,  # scheme is case-insensitive: still unknown
    ],
)
def test_invalid_credentials_get_401_with_a_bearer_challenge(http: httpx.Client, header: str | None) -> None:
    r = http.get("/v1/exports", headers={"Authorization": header} if header else {})
    error(r, 401, "unauthorized")
    assert r.headers["www-authenticate"].startswith('Bearer realm="esc-sync"')
    assert ('error="invalid_token"' in r.headers["www-authenticate"]) == (header is not None)


def test_token_without_the_scope_gets_403(http: httpx.Client, world: World) -> None:
    err = error(http.get("/v1/exports", headers=auth(world.tokens["badges_a"])), 403, "insufficient_scope")
    assert "exports:read" in err["message"]
    r = http.get(f"/v1/cards/{world.a[1].escn}/badge", headers=auth(world.tokens["vendor_a"]))
    error(r, 403, "insufficient_scope")


def test_rate_limit_answers_429_with_retry_after(http: httpx.Client, world: World) -> None:
    limited = token_for(world.engine, world.settings, ["exports:read"], [A], rate=3)
    statuses = [http.get("/v1/exports", headers=auth(limited)).status_code for _ in range(3)]
    assert statuses == [200, 200, 200]
    r = http.get("/v1/exports", headers=auth(limited))
    error(r, 429, "rate_limited")
    assert 1 <= int(r.headers["retry-after"]) <= 20  # 3 a minute: one request every 20 s
    # Other tokens are not affected.
    assert http.get("/v1/exports", headers=auth(world.tokens["vendor_a"])).status_code == 200


def test_last_use_is_recorded(http: httpx.Client, world: World) -> None:
    fresh = token_for(world.engine, world.settings, ["exports:read"], [A])
    before = utcnow()
    assert http.get("/v1/exports", headers=auth(fresh)).status_code == 200
    with world.engine.connect() as conn:
        used = conn.execute(select(ApiToken.last_used_at).where(ApiToken.id == fresh.id)).scalar_one()
    assert used is not None and used >= before - dt.timedelta(seconds=1)


# --- tokens (the CLI functions) -----------------------------------------------------------------------


def cli(world: World, *argv: str) -> int:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command", required=True))
    return dispatch(parser.parse_args(list(argv)), world.settings)


def test_tokens_create_prints_the_token_once_and_stores_only_its_hash(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        cli(world, "tokens", "create", "--name", "Vendor X", "--scope", "exports:read", "--institution", A)
        == 0
    )
    out, err = capsys.readouterr()
    token = out.strip()
    assert out.count("\n") == 1 and token.startswith("escs_") and len(token) == 48
    assert token not in err and "Vendor X" in err and "not shown again" in err
    with world.engine.connect() as conn:
        row = conn.execute(select(ApiToken.__table__).where(ApiToken.name == "Vendor X")).one()
    assert row.token_hash == hashlib.sha256(token.encode()).hexdigest() == hash_token(token)
    assert row.prefix == token[:12] and row.scopes == "exports:read" and row.institutions == A
    assert not any(token in str(v) for v in row)  # the token itself is stored nowhere


def test_tokens_list_never_shows_secrets(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    cli(world, "tokens", "list")
    out = capsys.readouterr().out
    t = world.tokens["both_ab"]
    line = next(line for line in out.splitlines() if line.split()[0] == str(t.id))
    assert t.token[:12] in line and "exports:read,badges:read" in line and "unife,unipa" in line
    assert t.token not in out and hash_token(t.token) not in out
    assert out.splitlines()[0].split()[:3] == ["ID", "NAME", "PREFIX"]


def test_revoked_token_gets_401(http: httpx.Client, world: World, capsys: pytest.CaptureFixture[str]) -> None:
    t = token_for(world.engine, world.settings, ["badges:read"], [A])
    path = f"/v1/cards/{world.a[2].escn}/badge"
    assert http.get(path, headers=auth(t)).status_code == 200
    assert cli(world, "tokens", "revoke", str(t.id)) == 0
    assert "revoked at" in capsys.readouterr().out
    time.sleep(0.4)  # the server trusts a token lookup for token_cache_seconds (0.3 s here)
    error(http.get(path, headers=auth(t)), 401, "unauthorized")
    cli(world, "tokens", "revoke", str(t.id))
    assert "already revoked" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (
            ["--name", "x", "--scope", "exports:read", "--institution", "polimi"],
            "unknown university 'polimi'",
        ),
        (["--name", "x", "--scope", "exports:read"], "at least one --institution"),
        (["--name", "x", "--institution", A], "at least one --scope"),
        (["--name", " ", "--scope", "exports:read", "--institution", A], "--name"),
        (["--name", "x", "--scope", "exports:read", "--institution", A, "--rate-per-minute", "0"], "rate"),
    ],
)
def test_tokens_create_refuses_bad_input(world: World, argv: list[str], fragment: str) -> None:
    with pytest.raises(EscSyncError, match=fragment):
        cli(world, "tokens", "create", *argv)


def test_tokens_cli_refuses_unknown_scope_and_unknown_id(world: World) -> None:
    with pytest.raises(SystemExit):  # argparse: invalid choice
        cli(world, "tokens", "create", "--name", "x", "--scope", "admin", "--institution", A)
    with pytest.raises(EscSyncError, match="no token with id 999999"):
        cli(world, "tokens", "revoke", "999999")


def test_tokens_need_a_migrated_state_db(tmp_path: Path) -> None:
    settings = demo_settings(tmp_path, f"sqlite:///{tmp_path / 'empty.sqlite'}")
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command", required=True))
    with pytest.raises(EscSyncError, match="esc-sync db upgrade"):
        dispatch(parser.parse_args(["tokens", "list"]), settings)


def test_standalone_cli_creates_a_token_and_serves(world: World, tmp_path: Path) -> None:
    """`python -m etl.api.cli` as an operator runs it: the token on stdout, then the server answers it."""
    (tmp_path / "esc-sync.toml").write_text(demo_config_toml())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ESC_SYNC_", "DAGSTER_"))}
    env |= {
        "ESC_SYNC_HOME": str(tmp_path),
        "ESC_SYNC_CONFIG": str(tmp_path / "esc-sync.toml"),
        "ESC_SYNC_DATABASE_URL": world.settings.database_url,
    }
    create = [sys.executable, "-m", "etl.api.cli", "tokens", "create", "--name", "cli",
              "--scope", "badges:read", "--institution", A]  # fmt: skip
    p = subprocess.run(create, env=env, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert p.returncode == 0, p.stderr
    token = p.stdout.strip()
    bad = subprocess.run(
        [*create[:-1], "nowhere"], env=env, capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines() == ["esc-sync: tokens create: unknown university 'nowhere' "
                                               "(configured: unife, unipa)"]  # fmt: skip
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "etl.api.cli", "api", "--port", str(port), "--log-level", "warning"],
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                r = httpx.get(f"{url}/v1/cards/{world.a[3].escn}/badge", headers=auth(token), trust_env=False)
                break
            except httpx.TransportError:
                assert server.poll() is None and time.monotonic() < deadline, "server did not start"
                time.sleep(0.1)
        assert r.status_code == 200 and r.json()["escn"] == world.a[3].escn
    finally:
        server.terminate()
        out, err = server.communicate(timeout=15)
    assert f"http://127.0.0.1:{port}/docs" in out
    assert world.a[3].full_name not in out + err and world.a[3].matricola not in out + err  # no access log


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- exports: listing -----------------------------------------------------------------------------------


def test_list_exports_of_the_token_universities_newest_first(http: httpx.Client, world: World) -> None:
    r = http.get("/v1/exports", headers=auth(world.tokens["vendor_a"]))
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    listed = r.json()["exports"]
    ids = [e["id"] for e in listed]
    assert "unipa-2025-full" not in ids and "unife-2023-old" not in ids  # another university; expired
    assert ids[:2] == ["unife-2025-incr", "unife-2025-full"]
    assert [e["created_at"] for e in listed] == sorted((e["created_at"] for e in listed), reverse=True)
    full = listed[1]
    row = export_row(world.engine, "unife-2025-full")
    assert full["kind"] == "full" and full["rows"] == 36 and full["academic_year"] == 2025
    assert full["university"] == A and full["status"] == "ready" and full["since"] is None
    for which in ("parquet", "zip"):
        assert full[which]["url"] == f"{world.url}/v1/exports/unife-2025-full/{which}"
        assert full[which]["bytes"] == Path(getattr(row, f"{which}_path")).stat().st_size
        assert (
            full[which]["sha256"]
            == hashlib.sha256(Path(getattr(row, f"{which}_path")).read_bytes()).hexdigest()
        )
    assert listed[0]["kind"] == "incremental" and listed[0]["since"] is not None


def test_list_exports_filters(http: httpx.Client, world: World) -> None:
    both = auth(world.tokens["both_ab"])

    def ids(**params: str) -> list[str]:
        r = http.get("/v1/exports", params=params, headers=both)
        assert r.status_code == 200, r.text
        return [e["id"] for e in r.json()["exports"]]

    assert "unipa-2025-full" in ids() and "unife-2025-full" in ids()
    assert ids(university=B) == ["unipa-2025-full"]
    assert set(ids(university=A, academic_year="2025")) == {"unife-2025-full", "unife-2025-incr"}
    assert ids(since="2025-09-02T12:00:00") == ["unife-2025-incr", "unipa-2025-full"]
    assert ids(since="2025-09-02T14:00:00+02:00") == ids(since="2025-09-02T12:00:00Z")
    assert ids(kind="incremental") == ["unife-2025-incr"]
    assert len(ids(limit="1")) == 1
    err = error(
        http.get("/v1/exports", params={"university": B}, headers=auth(world.tokens["vendor_a"])), 403
    )
    assert err["code"] == "forbidden_university" and err["param"] == "university"


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"academic_year": "2025/26"}, "academic_year"),
        ({"academic_year": "1700"}, "academic_year"),
        ({"since": "last tuesday"}, "since"),
        ({"university": "UNIFE"}, "university"),
        ({"kind": "partial"}, "kind"),
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
    ],
)
def test_list_exports_malformed_parameters_get_422(
    http: httpx.Client, world: World, params: dict[str, str], param: str
) -> None:
    err = error(http.get("/v1/exports", params=params, headers=auth(world.tokens["vendor_a"])), 422)
    assert err["code"] == "invalid_parameter" and err["param"] == param and repr(param) in err["message"]


# --- exports: downloads ---------------------------------------------------------------------------------


def file_of(world: World, export_id: str, which: str) -> tuple[bytes, str]:
    row = export_row(world.engine, export_id)
    return Path(getattr(row, f"{which}_path")).read_bytes(), getattr(row, f"{which}_sha256")


def test_download_parquet_as_a_vendor_does(http: httpx.Client, world: World) -> None:
    content, sha = file_of(world, "unife-2025-full", "parquet")
    r = http.get("/v1/exports/unife-2025-full/parquet", headers=auth(world.tokens["vendor_a"]))
    assert r.status_code == 200
    assert r.content == content and hashlib.sha256(r.content).hexdigest() == sha
    assert r.headers["etag"] == f'"{sha}"' and r.headers["content-length"] == str(len(content))
    assert (
        r.headers["accept-ranges"] == "bytes"
        and r.headers["content-type"] == "application/vnd.apache.parquet"
    )
    assert r.headers["content-disposition"] == 'attachment; filename="unife-2025-full.parquet"'
    table = pq.read_table(io.BytesIO(r.content))
    assert table.num_rows == 36
    assert sorted(table.column("escn").to_pylist()) == sorted(c.escn for c in world.a[:36])
    row = table.slice(0, 1).to_pylist()[0]
    assert decode_qr(row["qr_png"]) == row["qr_payload"]


def test_download_zip_is_a_complete_archive(http: httpx.Client, world: World) -> None:
    r = http.get("/v1/exports/unife-2025-full/zip", headers=auth(world.tokens["both_ab"]))
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(r.content)) as z:
        assert z.testzip() is None
        sums = z.read("SHA256SUMS").decode().splitlines()
        for line in sums:
            digest, name = line.split("  ")
            assert hashlib.sha256(z.read(name)).hexdigest() == digest
        assert f"qr/{world.a[0].escn}.png" in z.namelist()


@pytest.mark.parametrize(
    ("header", "first", "last"),
    [("bytes=0-9", 0, 9), ("bytes=100-", 100, None), ("bytes=-7", -7, None), ("bytes=5-999999999", 5, None)],
)
def test_single_range_gets_206(
    http: httpx.Client, world: World, header: str, first: int, last: int | None
) -> None:
    content, sha = file_of(world, "unife-2025-full", "zip")
    size = len(content)
    start_at = first if first >= 0 else size + first
    end_at = last if last is not None else size - 1
    r = http.get(
        "/v1/exports/unife-2025-full/zip", headers={"Range": header, **auth(world.tokens["vendor_a"])}
    )
    assert r.status_code == 206
    assert r.content == content[start_at : end_at + 1]
    assert r.headers["content-range"] == f"bytes {start_at}-{end_at}/{size}"
    assert r.headers["content-length"] == str(end_at - start_at + 1) and r.headers["etag"] == f'"{sha}"'


def test_unsatisfiable_range_gets_416(http: httpx.Client, world: World) -> None:
    content, _ = file_of(world, "unife-2025-full", "parquet")
    headers = {"Range": f"bytes={len(content)}-", **auth(world.tokens["vendor_a"])}
    r = http.get("/v1/exports/unife-2025-full/parquet", headers=headers)
    assert error(r, 416, "range_not_satisfiable")["param"] == "Range"
    assert r.headers["content-range"] == f"bytes */{len(content)}"


@pytest.mark.parametrize(
    "extra",
    [
        {"Range": "bytes=0-1,5-6"},  # multiple ranges: served whole
        {"Range": "bytes=9-3"},  # invalid: ignored
        {"Range": "items=0-1"},  # another unit: ignored
        {"Range": "bytes=0-9", "If-Range": '"0000"'},  # the file changed since: the whole new one
    ],
)
def test_ignored_ranges_serve_the_whole_file(http: httpx.Client, world: World, extra: dict[str, str]) -> None:
    content, _ = file_of(world, "unife-2025-full", "parquet")
    r = http.get("/v1/exports/unife-2025-full/parquet", headers={**extra, **auth(world.tokens["vendor_a"])})
    assert r.status_code == 200 and r.content == content


def test_if_range_with_the_current_etag_honours_the_range(http: httpx.Client, world: World) -> None:
    content, sha = file_of(world, "unife-2025-full", "parquet")
    headers = {"Range": "bytes=0-3", "If-Range": f'"{sha}"', **auth(world.tokens["vendor_a"])}
    r = http.get("/v1/exports/unife-2025-full/parquet", headers=headers)
    assert r.status_code == 206 and r.content == content[:4] == b"PAR1"


def test_if_none_match_gets_304(http: httpx.Client, world: World) -> None:
    _, sha = file_of(world, "unife-2025-full", "parquet")
    for value in (f'"{sha}"', f'W/"{sha}"', f'"other", "{sha}"', "*"):
        headers = {"If-None-Match": value, **auth(world.tokens["vendor_a"])}
        r = http.get("/v1/exports/unife-2025-full/parquet", headers=headers)
        assert r.status_code == 304 and r.content == b"" and r.headers["etag"] == f'"{sha}"', value
    headers = {"If-None-Match": '"other"', **auth(world.tokens["vendor_a"])}
    assert http.get("/v1/exports/unife-2025-full/parquet", headers=headers).status_code == 200


def test_every_download_is_audited(http: httpx.Client, world: World) -> None:
    vendor = world.tokens["vendor_a"]
    content, sha = file_of(world, "unipa-2025-full", "zip")
    before = len(audit_rows(world.engine, "unipa-2025-full"))
    both = world.tokens["both_ab"]
    assert http.get("/v1/exports/unipa-2025-full/zip", headers=auth(both)).status_code == 200
    headers = {"Range": "bytes=0-99", **auth(both)}
    assert http.get("/v1/exports/unipa-2025-full/parquet", headers=headers).status_code == 206
    headers = {"If-None-Match": f'"{sha}"', **auth(both)}
    assert http.get("/v1/exports/unipa-2025-full/zip", headers=headers).status_code == 304
    assert http.get("/v1/exports/unipa-2025-full/zip", headers=auth(vendor)).status_code == 404  # not its own
    # The row of a streamed download is written once its body is sent.
    rows = wait_for(lambda: audit_rows(world.engine, "unipa-2025-full")[before:], count=4)
    got = sorted((r.token_id, r.action, r.status, r.bytes) for r in rows)
    assert got == sorted([
        (both.id, "download.zip", 200, len(content)),
        (both.id, "download.parquet", 206, 100),
        (both.id, "download.zip", 304, 0),
        (vendor.id, "download.zip", 404, 0),
    ])  # fmt: skip
    assert all(r.client == "127.0.0.1" for r in rows)


def test_expired_export_gets_410(http: httpx.Client, world: World) -> None:
    r = http.get("/v1/exports/unife-2023-old/parquet", headers=auth(world.tokens["vendor_a"]))
    error(r, 410, "export_expired")


def _corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only the checksum can tell
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("export_id", "which", "damage", "reason"),
    [
        ("unife-2024-bad-1", "parquet", _corrupt, "SHA-256 mismatch"),
        ("unife-2024-bad-2", "zip", lambda p: p.write_bytes(p.read_bytes()[:-10]), "size"),
        ("unife-2024-bad-3", "parquet", Path.unlink, "missing"),
    ],
)
def test_damaged_export_file_gets_503_and_is_marked_for_rebuild(
    http: httpx.Client, world: World, caplog: pytest.LogCaptureFixture, export_id: str, which: str,
    damage: Any, reason: str,
) -> None:  # fmt: skip
    path = Path(getattr(export_row(world.engine, export_id), f"{which}_path"))
    damage(path)
    caplog.set_level(logging.ERROR, logger="etl.api")
    r = http.get(f"/v1/exports/{export_id}/{which}", headers=auth(world.tokens["vendor_a"]))
    err = error(r, 503, "export_rebuilding")
    assert "being rebuilt" in err["message"] and int(r.headers["retry-after"]) > 0
    assert export_row(world.engine, export_id).status == "rebuild"
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "etl.api"]
    assert len(lines) == 1 and export_id in lines[0] and reason in lines[0] and "rebuild" in lines[0]
    assert not any(c.full_name in caplog.text or c.matricola in caplog.text for c in world.a[:3])
    # Listed as being rebuilt; its other file too answers 503 until export_files rebuilds it.
    listed = http.get("/v1/exports", headers=auth(world.tokens["vendor_a"])).json()["exports"]
    assert next(e for e in listed if e["id"] == export_id)["status"] == "rebuild"
    other = "zip" if which == "parquet" else "parquet"
    error(http.get(f"/v1/exports/{export_id}/{other}", headers=auth(world.tokens["vendor_a"])), 503)


def test_file_altered_after_its_first_verification_is_caught(http: httpx.Client, world: World) -> None:
    """The full checksum is cached per (inode, mtime, size): rewriting the file in place re-verifies it."""
    export_id = "unife-2024-bad-4"
    path = Path(export_row(world.engine, export_id).parquet_path)
    assert (
        http.get(f"/v1/exports/{export_id}/parquet", headers=auth(world.tokens["vendor_a"])).status_code
        == 200
    )
    stat = path.stat()
    _corrupt(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    r = http.get(f"/v1/exports/{export_id}/parquet", headers=auth(world.tokens["vendor_a"]))
    error(r, 503, "export_rebuilding")


@pytest.mark.parametrize("export_id", ["nope", "unipa-2025-full"])
def test_unknown_or_foreign_export_gets_the_same_404(
    http: httpx.Client, world: World, export_id: str
) -> None:
    r = http.get(f"/v1/exports/{export_id}/parquet", headers=auth(world.tokens["vendor_a"]))
    assert r.status_code == 404 and r.json() == {
        "error": {"code": "not_found", "message": "export not found"}
    }


def test_malformed_export_id_gets_422(http: httpx.Client, world: World) -> None:
    err = error(http.get("/v1/exports/.hidden/parquet", headers=auth(world.tokens["vendor_a"])), 422)
    assert err["param"] == "export_id"


# --- feed -----------------------------------------------------------------------------------------------


def feed_order(engine: Engine, university: str) -> list[str]:
    with engine.connect() as conn:
        stmt = (
            select(Card.escn)
            .where(Card.institution == university, Card.state == "registered")
            .order_by(Card.changed_at, Card.escn)
        )
        return list(conn.execute(stmt).scalars())


def page_through(
    http: httpx.Client, token: NewToken, university: str, limit: int, **params: str
) -> tuple[list, str]:
    items: list[dict[str, Any]] = []
    cursor = None
    for _ in range(1000):
        query = {"university": university, "limit": str(limit), **params} | (
            {"cursor": cursor} if cursor else {}
        )
        r = http.get("/v1/feed", params=query, headers=auth(token))
        assert r.status_code == 200, r.text
        body = r.json()
        assert len(body["items"]) <= limit
        items += body["items"]
        cursor = body["next_cursor"]
        if not body["has_more"]:
            return items, cursor
    raise AssertionError("the feed never ended")


def test_feed_pages_to_the_end_without_duplicates_or_gaps(http: httpx.Client, world: World) -> None:
    items, cursor = page_through(http, world.tokens["vendor_a"], A, limit=7)
    assert [i["escn"] for i in items] == feed_order(world.engine, A)  # every card once, in order
    assert set(items[0]) == set(FeedItemOut.model_fields) - {"qr"}
    by_escn = {i["escn"]: i for i in items}
    c = world.a[9]  # INACTIVE
    assert by_escn[c.escn] | {"qr_url": None} == {
        "escn": c.escn, "esi": c.esi, "matricola": c.matricola, "university": A, "academic_year": 2025,
        "status": "INACTIVE", "card_type": "SMART_PASSIVE", "issued_at": "2025-10-01",
        "expires_at": "2026-10-31",
        "changed_at": c.changed_at.isoformat(timespec="microseconds") + "Z", "qr_payload": c.payload,
        "qr_url": None,
    }  # fmt: skip
    assert by_escn[world.expired.escn]["status"] == "EXPIRED"
    png = http.get(by_escn[c.escn]["qr_url"], headers=auth(world.tokens["vendor_a"]))
    assert png.status_code == 200 and decode_qr(png.content) == c.payload
    # Polling with the last cursor: nothing new ...
    r = http.get(
        "/v1/feed", params={"university": A, "cursor": cursor}, headers=auth(world.tokens["vendor_a"])
    )
    assert r.json()["items"] == [] and r.json()["next_cursor"] == cursor and r.json()["has_more"] is False
    # ... until a card changes: then exactly that card.
    with world.engine.begin() as conn:
        conn.execute(update(Card).where(Card.escn == world.a[5].escn).values(changed_at=utcnow()))
    r = http.get(
        "/v1/feed", params={"university": A, "cursor": cursor}, headers=auth(world.tokens["vendor_a"])
    )
    assert [i["escn"] for i in r.json()["items"]] == [world.a[5].escn]


def test_feed_inline_qr_decodes_to_the_payload(http: httpx.Client, world: World) -> None:
    items, _ = page_through(http, world.tokens["both_ab"], B, limit=100, qr="inline")
    assert [i["escn"] for i in items] == feed_order(world.engine, B)
    for item in items:
        assert "qr_url" not in item
        assert decode_qr(base64.b64decode(item["qr"])) == item["qr_payload"]
    # Cards without a qr_images row yet get a QR rendered on the fly.
    items, _ = page_through(http, world.tokens["vendor_a"], A, limit=1000, qr="inline")
    missing = {c.escn for c in world.a[36:]}
    rendered = [i for i in items if i["escn"] in missing]
    assert len(rendered) == 4 and all(
        decode_qr(base64.b64decode(i["qr"])) == i["qr_payload"] for i in rendered
    )


def test_feed_holds_back_the_latest_changes(world: World) -> None:
    """Cards changed within feed_settle_seconds stay out: their writer's transaction may still be open."""
    app = create_app(world.settings, world.engine, feed_settle_seconds=3600, today=lambda: TODAY)
    with LiveServer(app) as server, httpx.Client(base_url=server.url, trust_env=False) as client:
        with world.engine.begin() as conn:
            conn.execute(update(Card).where(Card.escn == world.b[0].escn).values(changed_at=utcnow()))
        items, _ = page_through(client, world.tokens["both_ab"], B, limit=100)
    assert [i["escn"] for i in items] == [e for e in feed_order(world.engine, B) if e != world.b[0].escn]


def test_feed_refuses_other_universities_and_malformed_parameters(http: httpx.Client, world: World) -> None:
    vendor = auth(world.tokens["vendor_a"])
    err = error(http.get("/v1/feed", params={"university": B}, headers=vendor), 403, "forbidden_university")
    assert err["param"] == "university"
    b_cursor = encode_cursor(FeedPosition(B, BASE_TIME, world.b[0].escn))
    for params, param in (
        ({}, "university"),
        ({"university": A, "cursor": "%%%"}, "cursor"),
        ({"university": A, "cursor": base64.urlsafe_b64encode(b'[1,"unife",3]').decode()}, "cursor"),
        ({"university": A, "cursor": b_cursor}, "cursor"),
        ({"university": A, "limit": "1001"}, "limit"),
        ({"university": A, "limit": "ten"}, "limit"),
        ({"university": A, "qr": "jpeg"}, "qr"),
    ):
        err = error(http.get("/v1/feed", params=params, headers=vendor), 422, "invalid_parameter")
        assert err["param"] == param, (params, err)


# --- badges ---------------------------------------------------------------------------------------------


def expected_badge(settings: Settings, c: SeededCard) -> dict[str, Any]:
    return {
        "university_code": c.institution, "university_name": settings.ateneo(c.institution).name,
        "full_name": c.full_name, "matricola": c.matricola,
        "course_name": "Ingegneria Informatica e dell'Automazione", "academic_year": c.academic_year,
        "academic_year_label": f"{c.academic_year}/{c.academic_year + 1}", "esi": c.esi, "escn": c.escn,
        "card_type": c.card_type, "issued_at": c.issued_at.isoformat(),
        "expires_at": c.expires_at.isoformat(),
        "status": c.status, "qr_payload": c.payload,
    }  # fmt: skip


def test_badge_json_by_matricola_and_by_escn(http: httpx.Client, world: World) -> None:
    c = world.a[4]
    token = auth(world.tokens["badges_a"])
    for path in (
        f"/v1/universities/{A}/students/{c.matricola}/badge",
        f"/v1/universities/{A}/students/{c.matricola}/badge.json",
        f"/v1/universities/{A}/students/{c.matricola}/badge?format=json",
        f"/v1/cards/{c.escn}/badge",
        f"/v1/cards/{c.escn}/badge.json",
    ):
        r = http.get(path, headers=token)
        assert r.status_code == 200, (path, r.text)
        assert r.json() == expected_badge(world.settings, c), path
        assert r.headers["cache-control"] == "no-store"
    assert set(r.json()) == set(BadgeOut.model_fields)
    assert http.get(f"/v1/cards/{world.expired.escn}/badge", headers=token).json()["status"] == "EXPIRED"


@pytest.mark.parametrize("scenario", ["active_first", "latest", "replaced"])
def test_student_badge_is_the_current_card(http: httpx.Client, world: World, scenario: str) -> None:
    c = world.current[scenario]
    r = http.get(f"/v1/universities/{A}/students/{c.matricola}/badge", headers=auth(world.tokens["badges_a"]))
    assert r.json()["escn"] == c.escn and r.json()["status"] == c.status


def test_badge_html(http: httpx.Client, world: World) -> None:
    c = next(c for c in world.a if "'" in c.full_name)
    r = http.get(f"/v1/cards/{c.escn}/badge.html", headers=auth(world.tokens["badges_a"]))
    assert r.status_code == 200 and r.headers["content-type"] == "text/html; charset=utf-8"
    assert "default-src 'none'" in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff" and r.headers["cache-control"] == "no-store"
    html = r.text
    assert html.startswith("<!DOCTYPE html>") and c.full_name.replace("'", "&#x27;") in html
    assert c.matricola in html and c.escn in html and "<svg" in html and "<script" not in html
    same = http.get(
        f"/v1/cards/{c.escn}/badge", params={"format": "html"}, headers=auth(world.tokens["badges_a"])
    )
    assert same.text == html


def test_badge_pdf_is_one_id1_card(http: httpx.Client, world: World) -> None:
    c = world.a[6]
    r = http.get(
        f"/v1/universities/{A}/students/{c.matricola}/badge.pdf", headers=auth(world.tokens["badges_a"])
    )
    assert r.status_code == 200 and r.headers["content-type"] == "application/pdf"
    assert r.content.startswith(b"%PDF-")
    assert b"/MediaBox [0 0 242.65 153.01]" in r.content  # 85.60 x 53.98 mm in points
    assert r.headers["content-disposition"] == f'inline; filename="esc-{c.escn}.pdf"'


def test_qr_png_and_svg(http: httpx.Client, world: World) -> None:
    c = world.a[7]
    assert c.images is not None
    for token in (world.tokens["badges_a"], world.tokens["vendor_a"]):  # vendors may fetch card QR images
        r = http.get(f"/v1/cards/{c.escn}/qr.png", headers=auth(token))
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        assert r.content == c.images.png and decode_qr(r.content) == c.payload
    r = http.get(f"/v1/cards/{c.escn}/qr.svg", headers=auth(world.tokens["badges_a"]))
    assert r.headers["content-type"] == "image/svg+xml" and r.content == c.images.svg
    assert ET.fromstring(r.content).tag.endswith("svg")
    r = http.get(
        f"/v1/universities/{A}/students/{c.matricola}/qr.png", headers=auth(world.tokens["badges_a"])
    )
    assert r.status_code == 200 and decode_qr(r.content) == c.payload
    assert r.headers["cache-control"].startswith("private")


def test_qr_rendered_when_missing_or_stale(http: httpx.Client, world: World) -> None:
    missing = world.a[37]  # seeded without QR images
    r = http.get(f"/v1/cards/{missing.escn}/qr.png", headers=auth(world.tokens["badges_a"]))
    assert r.status_code == 200 and decode_qr(r.content) == missing.payload
    stale = world.a[8]
    old = render_qr(qr_payload(stale.escn, "http://esc.gg/"))
    with world.engine.begin() as conn:  # rendered for a previous base URL, not yet regenerated
        conn.execute(
            update(QrImage).where(QrImage.escn == stale.escn).values(payload=old.payload, png=old.png)
        )
    r = http.get(f"/v1/cards/{stale.escn}/qr.png", headers=auth(world.tokens["badges_a"]))
    assert decode_qr(r.content) == stale.payload == f"https://s.esc-r.eu/{stale.escn}"
    html = http.get(f"/v1/cards/{missing.escn}/badge.html", headers=auth(world.tokens["badges_a"]))
    assert html.status_code == 200 and "<svg" in html.text


def test_unknown_and_foreign_badges_get_the_same_404(http: httpx.Client, world: World) -> None:
    token = auth(world.tokens["badges_a"])
    unknown_escn = world.a[0].escn[:-12] + "000000000000"
    bodies = {
        http.get(path, headers=token).content
        for path in (f"/v1/cards/{unknown_escn}/badge", f"/v1/cards/{world.b[0].escn}/badge")
    }
    assert bodies == {b'{"error":{"code":"not_found","message":"card not found"}}'}
    bodies = {
        http.get(path, headers=token).content
        for path in (
            f"/v1/universities/{A}/students/M999999/badge",
            f"/v1/universities/{B}/students/{world.b[0].matricola}/badge",
            "/v1/universities/nowhere/students/M1/badge",
            f"/v1/universities/{B}/students/{world.b[0].matricola}/qr.png",
        )
    }
    assert bodies == {b'{"error":{"code":"not_found","message":"student not found"}}'}
    r = http.get(f"/v1/cards/{world.b[0].escn}/qr.png", headers=auth(world.tokens["vendor_a"]))
    assert r.status_code == 404


@pytest.mark.parametrize(
    ("path", "param"),
    [
        ("/v1/cards/not-an-escn/badge", "escn"),
        ("/v1/cards/{ESCN_UPPER}/badge", "escn"),
        ("/v1/cards/{escn}/badge.xml", "format"),
        ("/v1/cards/{escn}/badge?format=docx", "format"),
        ("/v1/cards/{escn}/qr.gif", "image"),
        ("/v1/universities/UNIFE/students/M1/badge", "university"),
        ("/v1/universities/unife/students/M1%20OR%201=1/badge", "matricola"),
        ("/v1/universities/unife/students/" + "9" * 21 + "/badge", "matricola"),
    ],
)
def test_malformed_badge_parameters_get_422(http: httpx.Client, world: World, path: str, param: str) -> None:
    escn = world.a[0].escn
    url = path.replace("{ESCN_UPPER}", escn.upper()).replace("{escn}", escn)
    err = error(http.get(url, headers=auth(world.tokens["badges_a"])), 422, "invalid_parameter")
    assert err["param"] == param


def test_cards_not_yet_registered_are_not_shown(http: httpx.Client, world: World) -> None:
    c = world.pending
    token = auth(world.tokens["both_ab"])
    for path in (
        f"/v1/cards/{c.escn}/badge",
        f"/v1/cards/{c.escn}/qr.png",
        f"/v1/universities/{A}/students/{c.matricola}/badge",
    ):
        assert http.get(path, headers=token).status_code == 404, path
    items, _ = page_through(http, world.tokens["both_ab"], A, limit=1000)
    assert c.escn not in {i["escn"] for i in items}


@pytest.mark.parametrize("sql", ["CARD_BY_MATRICOLA", "QR_BY_MATRICOLA", "CARD_BY_ESCN", "QR_BY_ESCN"])
def test_hot_lookups_use_indexes_only(world: World, sql: str) -> None:
    """SQLite has no statistics: the student lookups must still start from ix_careers_matricola."""
    statement = getattr(hot_reads, sql)
    params = (A,) * statement.count("?")
    with world.engine.connect() as conn:
        plan = [row[3] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, params)]
    assert plan and not [step for step in plan if step.startswith("SCAN")], plan


def test_database_trouble_is_a_503_never_a_500(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = demo_settings(tmp_path, f"sqlite:///{tmp_path / 'never-migrated.sqlite'}")
    with LiveServer(create_app(settings)) as server:
        r = httpx.get(f"{server.url}/v1/cards/{'0' * 8}-0000-1000-8000-000999978433/badge",
                      headers=auth("escs_" + "C" * 43), trust_env=False)  # fmt: skip
    assert error(r, 503, "database_unavailable") and r.headers["retry-after"]
    assert "no such table" in caplog.text
    down = demo_settings(tmp_path, f"postgresql+psycopg://nobody@127.0.0.1:{_free_port()}/none")
    with LiveServer(create_app(down)) as server:
        r = httpx.get(f"{server.url}/v1/health", trust_env=False)
    assert r.status_code == 503 and r.json()["database"] == "unreachable" and r.json()["status"] == "degraded"


def test_hot_reader_recovers_after_a_database_error(tmp_path: Path) -> None:
    import asyncio

    from sqlalchemy.exc import OperationalError

    engine = make_engine(f"sqlite:///{tmp_path / 'later.sqlite'}")
    reader = hot_reads.HotReader(engine)
    try:
        with pytest.raises(OperationalError, match="no such table"):
            asyncio.run(reader.card_by_escn("x"))
        upgrade(engine)  # the operator fixes it: the next read works, on a fresh connection
        assert asyncio.run(reader.card_by_escn("x")) is None
    finally:
        reader.close()
        engine.dispose()


def test_unknown_route_is_a_json_404(http: httpx.Client) -> None:
    error(http.get("/v2/exports"), 404, "not_found")
    error(http.post("/v1/health"), 405, "method_not_allowed")


# --- both databases -------------------------------------------------------------------------------------


def test_main_flows_on_sqlite_and_postgresql(state_url: str, tmp_path: Path) -> None:
    settings = demo_settings(tmp_path, state_url)
    engine = make_engine(state_url)
    upgrade(engine)
    try:
        cards = seed_cards(engine, settings, A, 9, with_qr=lambda i: i != 4, same_changed_at_every=2)
        other = seed_cards(engine, settings, B, 2, first_stu_id=500)
        files = seed_export(
            engine, tmp_path / "exports", "unife-2025-x", A, 2025, export_rows(settings, cards[:4])
        )
        both = token_for(engine, settings, ["exports:read", "badges:read"], [A])
        app = create_app(settings, engine, feed_settle_seconds=0, today=lambda: TODAY)
        with (
            LiveServer(app) as server,
            httpx.Client(base_url=server.url, trust_env=False, headers=auth(both)) as c,
        ):
            r = c.get(f"/v1/universities/{A}/students/{cards[1].matricola}/badge")
            assert r.status_code == 200 and r.json() == expected_badge(settings, cards[1])
            for card in (cards[3], cards[4]):  # stored image; rendered on the fly
                assert decode_qr(c.get(f"/v1/cards/{card.escn}/qr.png").content) == card.payload
            assert c.get(f"/v1/cards/{other[0].escn}/badge").status_code == 404
            items, _ = page_through(c, both, A, limit=2)
            assert [i["escn"] for i in items] == feed_order(engine, A) and len(items) == 9
            r = c.get("/v1/exports/unife-2025-x/parquet", headers={"Range": "bytes=0-3"})
            assert r.status_code == 206 and r.content == b"PAR1"
            r = c.get("/v1/exports/unife-2025-x/zip")
            assert hashlib.sha256(r.content).hexdigest() == files.zip.sha256
            rows = wait_for(lambda: audit_rows(engine, "unife-2025-x"), 2)
            assert sorted((a.status, a.bytes) for a in rows) == [(200, files.zip.size_bytes), (206, 4)]
            files.parquet.path.unlink()
            error(c.get("/v1/exports/unife-2025-x/parquet"), 503, "export_rebuilding")
            assert export_row(engine, "unife-2025-x").status == "rebuild"
            # the downloads (written in batches, so waited for) and every other read beside them
            downloads = select(ApiAudit.__table__).where(ApiAudit.action.like("download.%"))
            assert len(wait_for(lambda: rows_of(engine, downloads), 3)) == 3
            reads = wait_for(lambda: rows_of(engine, select(ApiAudit.__table__)), 4)
            assert {r.action for r in reads} - {"download.zip", "download.parquet"}
    finally:
        engine.dispose()


# --- pure pieces ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        (None, 100, None),
        ("bytes=0-0", 100, (0, 0)),
        ("bytes=10-", 100, (10, 99)),
        ("bytes=-1", 100, (99, 99)),
        ("bytes=-500", 100, (0, 99)),
        ("bytes=90-500", 100, (90, 99)),
        (" Bytes = 1 - 2 ", 100, (1, 2)),
        ("bytes=5-1", 100, None),
        ("bytes=0-1,4-5", 100, None),
        ("bytes=-", 100, None),
        ("pages=1-2", 100, None),
    ],
)
def test_parse_range(header: str | None, size: int, expected: tuple[int, int] | None) -> None:
    assert parse_range(header, size) == expected


@pytest.mark.parametrize(
    ("header", "size"), [("bytes=100-", 100), ("bytes=-0", 100), ("bytes=0-", 0), ("bytes=-5", 0)]
)
def test_parse_range_unsatisfiable(header: str, size: int) -> None:
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, size)


def test_conditional_headers() -> None:
    assert etag_matches('"a", W/"b"', '"b"') and etag_matches("*", '"x"')
    assert not etag_matches(None, '"a"') and not etag_matches('"ab"', '"a"')
    assert (
        if_range_allows(None, '"a"')
        and if_range_allows(' "a" ', '"a"')
        and not if_range_allows('W/"a"', '"a"')
    )


def test_cursor_round_trip_and_rejects() -> None:
    pos = FeedPosition(A, dt.datetime(2025, 9, 1, 8, 0, 0, 123), "2174f550-6dd7-103e-8001-001999978433")
    assert decode_cursor(encode_cursor(pos)) == pos
    assert decode_cursor(encode_cursor(start(A))) == start(A)
    assert "=" not in encode_cursor(pos)
    aware = base64.urlsafe_b64encode(b'[1,"unife","2025-09-01T08:00:00+02:00","x"]').decode()
    for bad in ("", "!!!", base64.urlsafe_b64encode(b"[2,1,2,3]").decode(), encode_cursor(pos)[:-3], aware):
        with pytest.raises(InvalidCursor):
            decode_cursor(bad)


def test_rate_limiter_refills_continuously() -> None:
    now = [0.0]
    limiter = RateLimiter(clock=lambda: now[0])
    assert [limiter.acquire(1, 2) for _ in range(2)] == [0.0, 0.0]
    wait = limiter.acquire(1, 2)
    assert wait == pytest.approx(30.0) and retry_after_header(wait) == "30"
    assert limiter.acquire(2, 2) == 0.0  # buckets are per token
    now[0] = 29.0
    assert limiter.acquire(1, 2) == pytest.approx(1.0) and retry_after_header(0.2) == "1"
    now[0] = 30.5
    assert limiter.acquire(1, 2) == 0.0


def test_display_status() -> None:
    day = dt.date(2026, 1, 15)
    assert display_status("ACTIVE", day, day) == "ACTIVE"
    assert display_status("ACTIVE", day - dt.timedelta(days=1), day) == "EXPIRED"
    assert display_status("INACTIVE", day - dt.timedelta(days=1), day) == "INACTIVE"


def test_bearer_header_parsing() -> None:
    assert bearer_token(None) is None
    assert bearer_token("Bearer abc") == "abc" and bearer_token("bearer  abc ") == "abc"
    for bad in ("Basic abc", "Bearer", "Bearer ", "abc"):
        with pytest.raises(ApiError) as info:
            bearer_token(bad)
        assert info.value.status == 401


def test_file_verifier_hashes_each_file_version_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 5000)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    calls = []
    real = files_module.hash_descriptor
    monkeypatch.setattr(files_module, "hash_descriptor", lambda fd: calls.append(fd) or real(fd))
    verifier = FileVerifier()
    for _ in range(3):
        os.close(verifier.open_verified(str(path), 5000, sha))
    assert len(calls) == 1
    with pytest.raises(FileProblem, match="size 5000 instead of 4999"):
        verifier.open_verified(str(path), 4999, sha)
    with pytest.raises(FileProblem, match="SHA-256 mismatch"):
        verifier.open_verified(str(path), 5000, "0" * 64)
    with pytest.raises(FileProblem, match="not a regular file"):
        verifier.open_verified(str(tmp_path), 5000, sha)
    with pytest.raises(FileProblem, match="missing"):
        verifier.open_verified(str(tmp_path / "gone"), 1, sha)


def test_badge_json_is_plain_utf8(http: httpx.Client, world: World) -> None:
    c = next(c for c in world.a if "ò" in c.full_name or "À" in c.full_name)
    r = http.get(f"/v1/cards/{c.escn}/badge", headers=auth(world.tokens["badges_a"]))
    assert c.full_name.encode() in r.content and json.loads(r.content)["full_name"] == c.full_name
