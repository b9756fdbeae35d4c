"""The REST service's security findings of issue 22, each reproduced over real HTTP: a forged audit,
enumeration by matricola, guessing tokens, revoked and expired tokens in use, token expiry, headers,
X-Forwarded-For, an audit that cannot be written, and a SIGKILLed server with every answered read
audited."""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, select, text, update

from etl.api.app import create_app
from etl.api.tokens import NewToken, create_token, parse_expiry
from etl.config import Settings
from etl.demo.config import demo_config_toml
from etl.domain.api_policy import ApiPolicy
from etl.errors import ConfigError, EscSyncError
from etl.store.db import make_engine
from etl.store.migrate import upgrade
from etl.store.models import ApiAudit, ApiToken
from tests.api_seed import LiveServer, SeededCard, export_rows, seed_cards, seed_export
from tests.deployment import free_port
from tests.fixtures.world import demo_settings

REPO = Path(__file__).resolve().parents[1]
A, B = "unife", "unipa"


@dataclass
class Site:
    settings: Settings
    engine: Engine
    cards: list[SeededCard]

    def token(self, *scopes: str, codes: tuple[str, ...] = (A,), **kw: object) -> NewToken:
        return create_token(
            self.engine, name="sec", scopes=list(scopes) or ["badges:read", "exports:read"],
            institutions=list(codes), known_institutions=self.settings.codes, **kw,  # type: ignore[arg-type]
        )  # fmt: skip

    def serve(self, **policy: object) -> LiveServer:
        settings = replace(self.settings, api=replace(self.settings.api, **policy))
        return LiveServer(create_app(settings, self.engine, token_cache_seconds=0, feed_settle_seconds=0))

    def audit(self, token: NewToken) -> list[ApiAudit]:
        with self.engine.connect() as conn:
            stmt = select(ApiAudit.__table__).where(ApiAudit.token_id == token.id).order_by(ApiAudit.id)
            return list(conn.execute(stmt))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    home = tmp_path_factory.mktemp("security")
    db_url = f"sqlite:///{home / 'state.sqlite'}"
    settings = demo_settings(home, db_url)
    engine = make_engine(db_url)
    upgrade(engine)
    cards = seed_cards(engine, settings, A, 5)
    seed_cards(engine, settings, B, 2, first_stu_id=900)
    seed_export(engine, home / "exports", "unife-2025-full", A, 2025, export_rows(settings, cards))
    yield Site(settings, engine, cards)
    engine.dispose()


def bearer(token: NewToken | str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token if isinstance(token, str) else token.token}"}


# --- an audit that tells the truth --------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "university=unipa&university=unife",
        "university=unife&university=unife",
        "%75niversity=unipa&university=unife",
        "university=unife&limit=1&limit=2",
    ],
)
def test_a_repeated_query_parameter_is_refused(site: Site, query: str) -> None:
    token = site.token()
    with site.serve() as server, httpx.Client(base_url=server.url, trust_env=False) as http:
        r = http.get(f"/v1/feed?{query}", headers=bearer(token))
    assert r.status_code == 422, r.text
    assert "given more than once" in r.json()["error"]["message"]
    assert site.audit(token) == []  # no route ran: nothing was read


def test_the_audit_names_the_university_and_cursor_the_route_used(site: Site) -> None:
    token = site.token("exports:read")
    with site.serve() as server, httpx.Client(base_url=server.url, trust_env=False) as http:
        first = http.get("/v1/feed?university=unif%65&limit=2", headers=bearer(token))
        assert first.status_code == 200 and len(first.json()["items"]) == 2
        cursor = first.json()["next_cursor"]
        assert http.get("/v1/feed", params={"%75niversity": "x"}, headers=bearer(token)).status_code == 422
        assert (
            http.get(f"/v1/feed?%75niversity=unife&cursor={cursor}", headers=bearer(token)).status_code == 200
        )
        assert http.get("/v1/exports?university=unipa", headers=bearer(token)).status_code == 403
    rows = site.audit(token)
    assert [(r.action, r.status, r.institution) for r in rows] == [
        ("feed", 200, A),
        ("feed", 422, None),  # parameters that failed validation name no university
        ("feed", 200, A),
        ("list_exports_route", 403, B),
    ]
    assert rows[0].resource == "/v1/feed?university=unife&limit=2&qr=link"
    assert rows[2].resource == f"/v1/feed?university=unife&cursor={cursor}&limit=100&qr=link"
    assert rows[3].resource.startswith("/v1/exports?university=unipa")


def test_no_answer_leaves_without_its_audit_row(site: Site, tmp_path: Path) -> None:
    """The row is committed before the answer is sent; when it cannot be, the read is refused."""
    db_url = f"sqlite:///{tmp_path / 'state.sqlite'}"
    engine = make_engine(db_url)
    upgrade(engine)
    card = seed_cards(engine, site.settings, A, 1)[0]
    token = create_token(
        engine, name="t", scopes=["badges:read"], institutions=[A], known_institutions=site.settings.codes
    )
    app = create_app(site.settings, engine, token_cache_seconds=60)
    with LiveServer(app) as server, httpx.Client(base_url=server.url, trust_env=False) as http:
        r = http.get(f"/v1/cards/{card.escn}/badge", headers=bearer(token))
        assert r.status_code == 200
        with engine.connect() as conn:  # already there when the answer arrived: no waiting
            assert conn.execute(select(ApiAudit.id)).all() != []
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE api_audit RENAME TO api_audit_away"))
        r = http.get(f"/v1/cards/{card.escn}/badge", headers=bearer(token))
        assert r.status_code == 503 and r.json()["error"]["code"] == "audit_unavailable", r.text
        assert card.full_name not in r.text
        r = http.get("/v1/exports/unife-2025-full/zip", headers=bearer(token))
        assert r.status_code in (403, 503)  # badges token: refused by scope before any read
    engine.dispose()


# --- enumeration ------------------------------------------------------------------------------------


def test_lookups_by_matricola_have_their_own_lower_allowance(site: Site) -> None:
    token = site.token("badges:read", matricola_rate_per_minute=20)
    with site.serve() as server, httpx.Client(base_url=server.url, trust_env=False) as http:
        statuses = [
            http.get(
                f"/v1/universities/unife/students/{500_000 + i}/badge", headers=bearer(token)
            ).status_code
            for i in range(25)
        ]
        card = site.cards[0]
        by_escn = http.get(f"/v1/cards/{card.escn}/badge", headers=bearer(token))
    first_429 = statuses.index(429)
    assert first_429 <= 20 and set(statuses[first_429:]) == {429}, statuses
    assert by_escn.status_code == 200  # lookups by card number keep the general allowance


def test_a_token_may_be_limited_to_lookups_by_escn(site: Site) -> None:
    token = site.token("badges:read", matricola_rate_per_minute=0)
    card = site.cards[1]
    with site.serve() as server, httpx.Client(base_url=server.url, trust_env=False) as http:
        r = http.get(f"/v1/universities/unife/students/{card.matricola}/badge", headers=bearer(token))
        assert r.status_code == 403 and r.json()["error"]["code"] == "matricola_lookup_disabled"
        assert http.get(f"/v1/cards/{card.escn}/qr.png", headers=bearer(token)).status_code == 200


def test_a_token_whose_lookups_mostly_find_nothing_is_logged_and_throttled(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    token = site.token("badges:read", matricola_rate_per_minute=10_000)
    caplog.set_level(logging.WARNING, logger="etl.api")
    with site.serve(not_found_min=15) as server, httpx.Client(base_url=server.url, trust_env=False) as http:
        statuses = [
            http.get(
                f"/v1/universities/unife/students/{700_000 + i}/badge", headers=bearer(token)
            ).status_code
            for i in range(30)
        ]
        real = http.get(f"/v1/cards/{site.cards[0].escn}/badge", headers=bearer(token))
    assert statuses[:15] == [404] * 15 and set(statuses[15:]) == {429}, statuses
    assert real.status_code == 429 and int(real.headers["retry-after"]) > 0
    lines = [r.getMessage() for r in caplog.records if "found nothing" in r.getMessage()]
    assert len(lines) == 1 and f"token {token.id} ({token.token[:12]}…)" in lines[0], lines
    assert token.token not in caplog.text and "700000" not in caplog.text


# --- failed authentication, revoked and expired tokens -------------------------------------------------


def test_failed_authentications_are_throttled_per_address(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="etl.api")
    good = site.token()
    with (
        site.serve(failed_auth_per_minute=10) as server,
        httpx.Client(base_url=server.url, trust_env=False) as http,
    ):
        statuses = [
            http.get("/v1/exports", headers=bearer("escs_" + f"{i:043d}")).status_code for i in range(25)
        ]
        after = http.get("/v1/exports", headers=bearer(good))
        health = http.get("/v1/health")
    assert statuses[:10] == [401] * 10 and set(statuses[10:]) == {429}, statuses
    assert after.status_code == 429  # the address is throttled, whatever it sends next
    assert health.status_code == 200  # the public probe is not
    lines = [r.getMessage() for r in caplog.records if "failed authentications" in r.getMessage()]
    assert len(lines) == 1 and "127.0.0.1" in lines[0] and "escs_" not in caplog.text


def test_revoked_and_expired_tokens_in_use_leave_a_line_with_their_prefix(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    from etl.api.tokens import revoke_token

    caplog.set_level(logging.WARNING, logger="etl.api")
    revoked, expired, alive = site.token(), site.token(), site.token(expires_at=dt.datetime(2099, 1, 1))
    revoke_token(site.engine, revoked.id)
    with site.engine.begin() as conn:
        conn.execute(
            update(ApiToken).where(ApiToken.id == expired.id).values(expires_at=dt.datetime(2020, 1, 1))
        )
    with site.serve() as server, httpx.Client(base_url=server.url, trust_env=False) as http:
        for token in (revoked, expired, revoked):
            r = http.get("/v1/exports", headers=bearer(token))
            assert r.status_code == 401 and "revoked or expired" in r.json()["error"]["message"]
        assert http.get("/v1/exports", headers=bearer(alive)).status_code == 200
    lines = [
        r.getMessage() for r in caplog.records if "token" in r.getMessage() and "used from" in r.getMessage()
    ]
    assert lines == [
        f"api: revoked token {revoked.id} ({revoked.token[:12]}…) used from 127.0.0.1",
        f"api: expired token {expired.id} ({expired.token[:12]}…) used from 127.0.0.1",
    ]  # once a minute per token, never the token itself
    for token in (revoked, expired):
        assert token.token not in caplog.text


def test_a_token_expires_while_in_use(site: Site) -> None:
    token = site.token(expires_at=dt.datetime.now(dt.UTC).replace(tzinfo=None) + dt.timedelta(seconds=2))
    app = create_app(site.settings, site.engine, token_cache_seconds=300)  # cached: expiry still holds
    with LiveServer(app) as server, httpx.Client(base_url=server.url, trust_env=False) as http:
        assert http.get("/v1/exports", headers=bearer(token)).status_code == 200
        time.sleep(2.2)
        assert http.get("/v1/exports", headers=bearer(token)).status_code == 401


def test_expiry_is_given_in_days_a_date_or_never() -> None:
    now = dt.datetime(2026, 12, 5, 13, 0)
    assert parse_expiry("90d", now, 365) == now + dt.timedelta(days=90)
    assert parse_expiry("2027-06-30", now, 365) == dt.datetime(2027, 7, 1)
    assert parse_expiry("never", now, 365) is None
    assert parse_expiry(None, now, 365) == now + dt.timedelta(days=365)
    assert parse_expiry(None, now, 0) is None  # [api] token_days = 0: tokens never expire
    for bad in ("0d", "yesterday", "2026-12-04", "-5d", "99999d"):
        with pytest.raises(EscSyncError, match="--expires"):
            parse_expiry(bad, now, 365)


def test_tokens_create_and_list_show_the_expiry(tmp_path: Path) -> None:
    toml = demo_config_toml() + "\n[api]\ntoken_days = 30\nmatricola_rate_per_minute = 12\n"
    (tmp_path / "esc-sync.toml").write_text(toml)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESC_SYNC_")}
    env |= {
        "ESC_SYNC_HOME": str(tmp_path), "ESC_SYNC_CONFIG": str(tmp_path / "esc-sync.toml"),
        "ESC_SYNC_DATABASE_URL": f"sqlite:///{tmp_path / 'state.sqlite'}",
    }  # fmt: skip

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "etl.cli", *args],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )

    assert cli("db", "upgrade").returncode == 0
    made = [
        cli("tokens", "create", "--name", "app", "--scope", "badges:read", "--institution", A),
        cli("tokens", "create", "--name", "vendor", "--scope", "exports:read", "--institution", A,
            "--expires", "never", "--matricola-rate-per-minute", "0"),
        cli("tokens", "create", "--name", "x", "--scope", "exports:read", "--institution", A,
            "--expires", "soon"),
    ]  # fmt: skip
    assert [m.returncode for m in made] == [0, 0, 2], [m.stderr for m in made]
    assert "--expires 'soon'" in made[2].stderr
    in_30 = (dt.datetime.now(dt.UTC) + dt.timedelta(days=30)).strftime("%Y-%m-%d")
    assert f"expires {in_30}" in made[0].stderr and "12 by matricola" in made[0].stderr
    listing = cli("tokens", "list").stdout.splitlines()
    assert "EXPIRES" in listing[0] and "MATRICOLA/MIN" in listing[0]
    app, vendor = listing[1].split(), listing[2].split()
    assert in_30 in app and "12" in app
    assert "never" in vendor and "0" in vendor


def test_api_policy_is_validated() -> None:
    assert ApiPolicy.from_mapping({}) == ApiPolicy()
    for bad in (
        {"token_days": -1}, {"matricola_rate_per_minute": "60"}, {"failed_auth_per_minute": 0},
        {"not_found_share": 0}, {"trusted_proxies": "10.0.0.1"}, {"trusted_proxies": ["proxy.local"]},
    ):  # fmt: skip
        with pytest.raises(ConfigError, match=f"api: field {next(iter(bad))}"):
            ApiPolicy.from_mapping(bad)
    assert ApiPolicy.from_mapping({"trusted_proxies": ["10.0.0.0/8", "::1"]}).trusted_proxies == (
        "10.0.0.0/8",
        "::1",
    )


# --- headers and the client address -----------------------------------------------------------------


def test_nosniff_on_every_answer(site: Site) -> None:
    token = site.token()
    card = site.cards[0]
    with site.serve() as server, httpx.Client(base_url=server.url, trust_env=False) as http:
        answers = [
            http.get("/v1/health"), http.get("/openapi.json"), http.get("/docs"), http.get("/nowhere"),
            http.get("/v1/exports"), http.get("/v1/exports?limit=0", headers=bearer(token)),
            http.get("/v1/feed?university=unife&university=unife", headers=bearer(token)),
            http.get(f"/v1/cards/{card.escn}/badge", headers=bearer(token)),
            http.get(f"/v1/cards/{card.escn}/badge.html", headers=bearer(token)),
            http.get(f"/v1/cards/{card.escn}/qr.svg", headers=bearer(token)),
            http.get("/v1/exports/unife-2025-full/parquet", headers=bearer(token)),
            http.head("/v1/exports/unife-2025-full/zip", headers=bearer(token)),
        ]  # fmt: skip
    for r in answers:
        assert r.headers.get("x-content-type-options") == "nosniff", (r.request.url, r.status_code)
    assert {r.status_code for r in answers} >= {200, 401, 404, 422}


@pytest.mark.parametrize(("trusted", "expected"), [((), "127.0.0.1"), (("127.0.0.1",), "203.0.113.9")])
def test_x_forwarded_for_is_believed_only_from_trusted_proxies(
    site: Site, trusted: tuple[str, ...], expected: str
) -> None:
    token = site.token()
    headers = {**bearer(token), "X-Forwarded-For": "203.0.113.9"}
    with (
        site.serve(trusted_proxies=trusted) as server,
        httpx.Client(base_url=server.url, trust_env=False) as http,
    ):
        assert http.get("/v1/exports", headers=headers).status_code == 200
    assert [r.client for r in site.audit(token)] == [expected]


# --- a killed server ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_sigkilled_api_has_audited_every_read_it_answered(tmp_path: Path) -> None:
    """`esc-sync api` as deployed, 200 concurrent badge reads, then SIGKILL with reads in flight:
    every read a client received an answer for has its row."""
    (tmp_path / "esc-sync.toml").write_text(demo_config_toml())
    db_url = f"sqlite:///{tmp_path / 'state.sqlite'}"
    settings = demo_settings(tmp_path, db_url)
    engine = make_engine(db_url)
    upgrade(engine)
    cards = seed_cards(engine, settings, A, 50)
    token = create_token(
        engine, name="k", scopes=["badges:read"], institutions=[A], known_institutions=settings.codes,
        rate_per_minute=1_000_000,
    )  # fmt: skip
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESC_SYNC_")}
    env |= {"ESC_SYNC_HOME": str(tmp_path), "ESC_SYNC_CONFIG": str(tmp_path / "esc-sync.toml"),
            "ESC_SYNC_DATABASE_URL": db_url}  # fmt: skip
    api = subprocess.Popen(
        [sys.executable, "-m", "etl.api.cli", "api", "--port", str(port), "--log-level", "warning"],
        env=env, cwd=REPO, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    answered: list[int] = []
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url + "/v1/health", trust_env=False).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline and api.poll() is None, "the API did not start"
            time.sleep(0.1)

        def read(i: int) -> None:
            try:
                r = httpx.get(
                    f"{url}/v1/cards/{cards[i % 50].escn}/badge", headers=bearer(token), trust_env=False
                )
            except httpx.HTTPError:
                return  # cut by the kill: no answer, nothing owed
            if r.status_code == 200:
                answered.append(i)

        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(read, i) for i in range(200)]
            while len(answered) < 100:
                time.sleep(0.001)
            os.kill(api.pid, signal.SIGKILL)
            for f in futures:
                f.result()
    finally:
        if api.poll() is None:
            api.kill()
        api.wait()
    with engine.connect() as conn:
        audited = conn.execute(
            select(ApiAudit.id).where(ApiAudit.token_id == token.id, ApiAudit.status == 200)
        ).all()
    engine.dispose()
    assert 100 <= len(answered) and len(audited) >= len(answered), (len(answered), len(audited))
