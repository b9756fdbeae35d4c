"""The whole token x scope x university matrix over real HTTP: every kind of token against every
endpoint, for a resource of university A (unife) and of university B (unipa), with the exact status.

Rules the table encodes: no valid token -> 401 (health excepted); a token without the endpoint's scope
-> 403; with the scope but not the university: a filter naming it -> 403, a resource of it -> 404 with
the very body of a missing resource; card QR images are open to both scopes (the feed links to them).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pytest

from etl.api.app import create_app
from etl.api.tokens import create_token, revoke_token
from etl.domain.api_policy import ApiPolicy
from etl.store.db import make_engine
from etl.store.migrate import upgrade
from etl.wallet.apple import AppleWalletConfig
from etl.wallet.google import GoogleWalletConfig
from tests.api_seed import LiveServer, SeededCard, export_rows, seed_cards, seed_export
from tests.fixtures.wallet import make_chain, make_google_key
from tests.fixtures.world import demo_settings

A, B = "unife", "unipa"

# token kind -> {endpoint: (status for a resource of A, status for a resource of B)}
_401 = (401, 401)
ALL_401 = {
    "list": _401, "parquet": _401, "zip": _401, "feed": _401, "card_json": _401, "card_html": _401,
    "card_pdf": _401, "student_json": _401, "student_qr": _401, "qr_png": _401, "qr_svg": _401,
    "card_pass": _401, "student_pass": _401, "card_google": _401, "student_google": _401,
    "health": (200, 200),
}  # fmt: skip
EXPECTED: dict[str, dict[str, tuple[int, int]]] = {
    "none": ALL_401,
    "malformed": ALL_401,
    "unknown": ALL_401,
    "revoked": ALL_401,
    "exports_A": {
        "list": (200, 403), "parquet": (200, 404), "zip": (200, 404), "feed": (200, 403),
        "card_json": (403, 403), "card_html": (403, 403), "card_pdf": (403, 403),
        "student_json": (403, 403), "student_qr": (403, 403),
        "qr_png": (200, 404), "qr_svg": (200, 404), "health": (200, 200),
        "card_pass": (403, 403), "student_pass": (403, 403),
        "card_google": (403, 403), "student_google": (403, 403),
    },
    "exports_B": {
        "list": (403, 200), "parquet": (404, 200), "zip": (404, 200), "feed": (403, 200),
        "card_json": (403, 403), "card_html": (403, 403), "card_pdf": (403, 403),
        "student_json": (403, 403), "student_qr": (403, 403),
        "qr_png": (404, 200), "qr_svg": (404, 200), "health": (200, 200),
        "card_pass": (403, 403), "student_pass": (403, 403),
        "card_google": (403, 403), "student_google": (403, 403),
    },
    "badges_A": {
        "list": (403, 403), "parquet": (403, 403), "zip": (403, 403), "feed": (403, 403),
        "card_json": (200, 404), "card_html": (200, 404), "card_pdf": (200, 404),
        "student_json": (200, 404), "student_qr": (200, 404),
        "qr_png": (200, 404), "qr_svg": (200, 404), "health": (200, 200),
        "card_pass": (200, 404), "student_pass": (200, 404),
        "card_google": (200, 404), "student_google": (200, 404),
    },
    "both_AB": {
        "list": (200, 200), "parquet": (200, 200), "zip": (200, 200), "feed": (200, 200),
        "card_json": (200, 200), "card_html": (200, 200), "card_pdf": (200, 200),
        "student_json": (200, 200), "student_qr": (200, 200),
        "qr_png": (200, 200), "qr_svg": (200, 200), "health": (200, 200),
        "card_pass": (200, 200), "student_pass": (200, 200),
        "card_google": (200, 200), "student_google": (200, 200),
    },
}  # fmt: skip
ENDPOINTS = {
    "list": "/v1/exports?university={u}",
    "parquet": "/v1/exports/{export}/parquet",
    "zip": "/v1/exports/{export}/zip",
    "feed": "/v1/feed?university={u}&limit=2",
    "card_json": "/v1/cards/{escn}/badge",
    "card_html": "/v1/cards/{escn}/badge.html",
    "card_pdf": "/v1/cards/{escn}/badge?format=pdf",
    "student_json": "/v1/universities/{u}/students/{matricola}/badge",
    "student_qr": "/v1/universities/{u}/students/{matricola}/qr.svg",
    "qr_png": "/v1/cards/{escn}/qr.png",
    "qr_svg": "/v1/cards/{escn}/qr.svg",
    "card_pass": "/v1/cards/{escn}/pass.pkpass",
    "student_pass": "/v1/universities/{u}/students/{matricola}/pass.pkpass",
    "card_google": "/v1/cards/{escn}/google-wallet",
    "student_google": "/v1/universities/{u}/students/{matricola}/google-wallet",
    "health": "/v1/health",
}
# What a really missing resource of each endpoint answers: a 404 of another university must match it.
MISSING = {
    "parquet": "/v1/exports/no-such-export/parquet",
    "zip": "/v1/exports/no-such-export/zip",
    "card_json": "/v1/cards/{unknown_escn}/badge",
    "card_html": "/v1/cards/{unknown_escn}/badge.html",
    "card_pdf": "/v1/cards/{unknown_escn}/badge?format=pdf",
    "student_json": "/v1/universities/{u}/students/M0/badge",
    "student_qr": "/v1/universities/{u}/students/M0/qr.svg",
    "qr_png": "/v1/cards/{unknown_escn}/qr.png",
    "qr_svg": "/v1/cards/{unknown_escn}/qr.svg",
    "card_pass": "/v1/cards/{unknown_escn}/pass.pkpass",
    "student_pass": "/v1/universities/{u}/students/M0/pass.pkpass",
    "card_google": "/v1/cards/{unknown_escn}/google-wallet",
    "student_google": "/v1/universities/{u}/students/M0/google-wallet",
}


@dataclass
class Matrix:
    url: str
    cards: dict[str, SeededCard]
    headers: dict[str, dict[str, str]]

    def path(self, endpoint: str, owner: str, template: str | None = None) -> str:
        card = self.cards[owner]
        unknown = card.escn[:-12] + "000000000000"
        return (template or ENDPOINTS[endpoint]).format(
            u=owner,
            export=f"{owner}-2025-full",
            escn=card.escn,
            matricola=card.matricola,
            unknown_escn=unknown,
        )


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Matrix]:
    home: Path = tmp_path_factory.mktemp("matrix")
    db_url = f"sqlite:///{home / 'state.sqlite'}"
    # 16 kinds of credential, many bad on purpose: the failed-authentication throttle is tested apart.
    settings = replace(demo_settings(home, db_url), api=ApiPolicy(failed_auth_per_minute=100_000))
    chain = make_chain(home, password=None)  # every university issues Apple Wallet passes here
    apple = AppleWalletConfig("pass.test.esc", "TEAM", chain["pass"], chain["key"], chain["wwdr"])
    google = GoogleWalletConfig("3388000000012345678", make_google_key(home)[0])
    settings = replace(
        settings, atenei=tuple(replace(a, apple_wallet=apple, google_wallet=google) for a in settings.atenei)
    )
    engine = make_engine(db_url)
    upgrade(engine)
    cards = {A: seed_cards(engine, settings, A, 3), B: seed_cards(engine, settings, B, 3, first_stu_id=100)}
    for code, seeded in cards.items():
        seed_export(engine, home / "exports", f"{code}-2025-full", code, 2025, export_rows(settings, seeded))

    def token(scopes: list[str], codes: list[str]) -> str:
        return create_token(
            engine, name="matrix", scopes=scopes, institutions=codes, known_institutions=settings.codes,
            rate_per_minute=10_000, matricola_rate_per_minute=10_000,
        ).token  # fmt: skip

    both = token(["exports:read", "badges:read"], [A, B])
    revoked = create_token(
        engine, name="revoked", scopes=["exports:read", "badges:read"], institutions=[A, B],
        known_institutions=settings.codes,
    )  # fmt: skip
    revoke_token(engine, revoked.id)
    headers = {
        "none": {},
        "malformed": {"Authorization": "Bearer escs_short"},
        "unknown": {"Authorization": "Bearer escs_" + "Q" * 43},
        "revoked": {"Authorization": f"Bearer {revoked.token}"},
        "exports_A": {"Authorization": f"Bearer {token(['exports:read'], [A])}"},
        "exports_B": {"Authorization": f"Bearer {token(['exports:read'], [B])}"},
        "badges_A": {"Authorization": f"Bearer {token(['badges:read'], [A])}"},
        "both_AB": {"Authorization": f"Bearer {both}"},
    }
    app = create_app(settings, engine, feed_settle_seconds=0, today=lambda: dt.date(2026, 1, 15))
    with LiveServer(app) as server:
        yield Matrix(server.url, {code: c[0] for code, c in cards.items()}, headers)
    engine.dispose()


@pytest.fixture(scope="module")
def http(matrix: Matrix) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=matrix.url, trust_env=False, timeout=30) as client:
        yield client


@pytest.mark.parametrize("owner", [A, B])
@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
@pytest.mark.parametrize("token", list(EXPECTED))
def test_matrix(http: httpx.Client, matrix: Matrix, token: str, endpoint: str, owner: str) -> None:
    expected = EXPECTED[token][endpoint][0 if owner == A else 1]
    r = http.get(matrix.path(endpoint, owner), headers=matrix.headers[token])
    assert r.status_code == expected, r.text[:300]
    if expected == 200:
        return
    body = r.json()
    assert set(body) == {"error"}
    if expected == 401:
        assert body["error"]["code"] == "unauthorized"
        assert r.headers["www-authenticate"].startswith("Bearer")
    elif expected == 403:
        assert body["error"]["code"] in {"insufficient_scope", "forbidden_university"}
    else:  # 404: indistinguishable from a resource that does not exist at all
        missing = http.get(matrix.path(endpoint, owner, MISSING[endpoint]), headers=matrix.headers[token])
        assert missing.status_code == 404
        assert r.content == missing.content and r.headers["content-type"] == missing.headers["content-type"]


def test_every_operation_is_in_the_matrix(http: httpx.Client) -> None:
    """A new endpoint must be added to the table above."""
    documented = {
        (method.upper(), path)
        for path, item in http.get("/openapi.json").json()["paths"].items()
        for method in item
    }
    covered = {
        "/v1/exports", "/v1/exports/{export_id}/parquet", "/v1/exports/{export_id}/zip", "/v1/feed",
        "/v1/cards/{escn}/badge", "/v1/cards/{escn}/badge.{format}", "/v1/cards/{escn}/qr.{image}",
        "/v1/universities/{university}/students/{matricola}/badge",
        "/v1/universities/{university}/students/{matricola}/qr.{image}", "/v1/health",
        "/v1/cards/{escn}/pass.pkpass", "/v1/universities/{university}/students/{matricola}/pass.pkpass",
        "/v1/cards/{escn}/google-wallet", "/v1/universities/{university}/students/{matricola}/google-wallet",
    }  # fmt: skip
    # badge.{format} of a student answers exactly like ?format= (test_api checks they agree).
    covered.add("/v1/universities/{university}/students/{matricola}/badge.{format}")
    assert {path for _, path in documented} == covered
    # HEAD only on the downloads: same route, same auth, headers without the bytes
    assert {path for method, path in documented if method != "GET"} == {
        "/v1/exports/{export_id}/parquet", "/v1/exports/{export_id}/zip",
    }  # fmt: skip
    assert {method for method, _ in documented} == {"GET", "HEAD"}
