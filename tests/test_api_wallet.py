"""The card as an Apple Wallet pass from the REST service (issue 24, item 3, Apple part): the badge
routes' token rules, a signed pass of the card's QR, voided once the card is not ACTIVE, and a
university without a Pass Type ID answering so."""

from __future__ import annotations

import datetime as dt
import email.utils
import io
import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import Engine, update

from etl.api.app import create_app
from etl.api.tokens import NewToken, create_token
from etl.config import Settings
from etl.errors import ConfigError
from etl.partitions import Partition
from etl.store.db import make_engine
from etl.store.migrate import upgrade
from etl.store.models import Card, WalletPass
from etl.wallet.apple import AppleWalletConfig, pass_auth_token, pass_images
from etl.wallet.follow import Wallets, follow_partition
from etl.wallet.google import GoogleWalletConfig
from tests.api_seed import LiveServer, SeededCard, seed_cards
from tests.fixtures.wallet import make_chain, make_google_key
from tests.fixtures.world import demo_settings
from tests.test_wallet_google import verified_claims


@dataclass
class World:
    http: httpx.Client
    engine: Engine
    unipa: list[SeededCard]
    unife: list[SeededCard]
    tokens: dict[str, NewToken]
    google_public: rsa.RSAPublicKey
    settings: Settings

    def follow(self) -> None:
        """The wallet_passes asset's work for unipa's Apple passes (what devices are told changed)."""
        ateneo = self.settings.ateneo("unipa")
        assert ateneo.apple_wallet is not None
        wallets = Wallets(signer=ateneo.apple_wallet.signer(), images=pass_images(None))
        follow_partition(self.engine, self.settings.home, Partition(2025, "unipa"), ateneo, wallets,
                         self.settings.qr_base_url, dt.date(2026, 1, 15))  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    home = tmp_path_factory.mktemp("wallet")
    chain = make_chain(home)
    google_key, google_public = make_google_key(home)
    settings = demo_settings(home, f"sqlite:///{home / 'state.sqlite'}")
    apple = AppleWalletConfig(
        "pass.it.unipa.esc",
        "ABCDE12345",
        chain["pass"],
        chain["key"],
        chain["wwdr"],
        "TEST_PASS_KEY_PASSWORD",
    )
    settings = replace(
        settings,
        atenei=tuple(
            replace(
                a, apple_wallet=apple, google_wallet=GoogleWalletConfig("3388000000012345678", google_key)
            )
            if a.code == "unipa"
            else a
            for a in settings.atenei
        ),
    )
    engine = make_engine(settings.database_url)
    upgrade(engine)
    unipa, unife = (
        seed_cards(engine, settings, "unipa", 3),
        seed_cards(engine, settings, "unife", 2, first_stu_id=50),
    )
    with engine.begin() as conn:
        conn.execute(update(Card).where(Card.escn == unipa[2].escn).values(desired_status="INACTIVE"))

    def token(scopes: list[str], codes: list[str]) -> NewToken:
        return create_token(
            engine, name="w", scopes=scopes, institutions=codes, known_institutions=settings.codes
        )

    tokens = {
        "app_pa": token(["badges:read"], ["unipa"]), "app_fe": token(["badges:read"], ["unife"]),
        "vendor_pa": token(["exports:read"], ["unipa"]),
    }  # fmt: skip
    mp = pytest.MonkeyPatch()
    mp.setenv("TEST_PASS_KEY_PASSWORD", "secret")
    mp.setenv("ESC_SYNC_WALLET_SECRET", "a-deployment-secret-for-tests")
    try:
        app = create_app(settings, engine, today=lambda: dt.date(2026, 1, 15))
        with LiveServer(app) as server, httpx.Client(base_url=server.url, trust_env=False) as http:
            yield World(http, engine, unipa, unife, tokens, google_public, settings)
    finally:
        mp.undo()
        engine.dispose()


def get(world: World, path: str, token: str) -> httpx.Response:
    return world.http.get(path, headers={"Authorization": f"Bearer {world.tokens[token].token}"})


def pass_body(r: httpx.Response) -> dict:
    with zipfile.ZipFile(io.BytesIO(r.content)) as archive:
        assert {"pass.json", "manifest.json", "signature", "icon.png"} <= set(archive.namelist())
        return json.loads(archive.read("pass.json"))


def test_a_card_and_a_student_as_a_pass(world: World) -> None:
    card = world.unipa[0]
    for path in (
        f"/v1/cards/{card.escn}/pass.pkpass",
        f"/v1/universities/unipa/students/{card.matricola}/pass.pkpass",
    ):
        r = get(world, path, "app_pa")
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/vnd.apple.pkpass"
        assert (
            r.headers["cache-control"] == "no-store"
            and f"esc-{card.escn}.pkpass" in r.headers["content-disposition"]
        )
        body = pass_body(r)
        assert body["serialNumber"] == card.escn and body["barcodes"][0]["message"].endswith(card.escn)
        assert body["voided"] is False and body["passTypeIdentifier"] == "pass.it.unipa.esc"


def test_an_inactive_card_gives_a_voided_pass(world: World) -> None:
    body = pass_body(get(world, f"/v1/cards/{world.unipa[2].escn}/pass.pkpass", "app_pa"))
    assert body["voided"] is True


def test_the_badge_routes_token_rules_hold(world: World) -> None:
    card = world.unipa[0]
    assert (
        get(world, f"/v1/cards/{card.escn}/pass.pkpass", "app_fe").status_code == 404
    )  # another university's
    assert (
        get(world, f"/v1/cards/{card.escn}/pass.pkpass", "vendor_pa").status_code == 403
    )  # not a badge token
    r = world.http.get(f"/v1/cards/{card.escn}/pass.pkpass")
    assert r.status_code == 401
    assert (
        get(world, "/v1/cards/00000000-0000-1000-8000-001999912345/pass.pkpass", "app_pa").status_code == 404
    )


def test_a_university_without_a_pass_type_id_says_so(world: World) -> None:
    r = get(world, f"/v1/cards/{world.unife[0].escn}/pass.pkpass", "app_fe")
    assert r.status_code == 404 and r.json()["error"]["code"] == "wallet_not_configured"


def test_the_apple_wallet_table_is_validated(tmp_path: Path) -> None:
    good = {"pass_type_id": "pass.x", "team_id": "T", "certificate": "{home}/c.pem", "key": "k.pem",
            "wwdr_certificate": "w.pem"}  # fmt: skip
    assert AppleWalletConfig.from_mapping(good, "university x", tmp_path).certificate == tmp_path / "c.pem"
    for bad, field in (({**good, "team_id": ""}, "team_id"), ({**good, "p12": "x"}, "unknown key"),
                       ({**good, "key_password_env": "secret!"}, "key_password_env")):  # fmt: skip
        with pytest.raises(ConfigError, match=f"university x: apple_wallet: .*{field}"):
            AppleWalletConfig.from_mapping(bad, "university x", tmp_path)
    settings = demo_settings(tmp_path, "sqlite://")
    with pytest.raises(ConfigError, match=r"apple wallet: .*c\.pem: No such file"):
        AppleWalletConfig.from_mapping(good, "university x", tmp_path).signer()
    assert all(a.apple_wallet is None for a in settings.atenei)


def test_apples_web_service_keeps_a_device_in_step_with_the_card(world: World) -> None:
    card = world.unipa[1]
    body = pass_body(get(world, f"/v1/cards/{card.escn}/pass.pkpass", "app_pa"))
    token, base = body["authenticationToken"], body["webServiceURL"]
    assert len(token) >= 16 and base.endswith("/apple/")
    path = base.split("://", 1)[1].split("/", 1)[1]  # the service's path on this server
    reg = f"/{path}v1/devices/device-1/registrations/pass.it.unipa.esc/{card.escn}"
    apple = {"Authorization": f"ApplePass {token}"}
    push = {"pushToken": "a" * 64}
    assert (
        world.http.post(
            reg, json=push, headers={"Authorization": "ApplePass wrong-token-0000000"}
        ).status_code
        == 401
    )
    assert world.http.post(reg, json=push, headers=apple).status_code == 201
    assert world.http.post(reg, json=push, headers=apple).status_code == 200  # already registered
    world.follow()  # the pass is stored: its change time is the device's first tag
    changed = world.http.get(f"/{path}v1/devices/device-1/registrations/pass.it.unipa.esc")
    assert changed.status_code == 200 and changed.json()["serialNumbers"] == [card.escn]
    tag = changed.json()["lastUpdated"]
    since = {"passesUpdatedSince": tag}
    assert (
        world.http.get(
            f"/{path}v1/devices/device-1/registrations/pass.it.unipa.esc", params=since
        ).status_code
        == 204
    )
    latest = world.http.get(f"/{path}v1/passes/pass.it.unipa.esc/{card.escn}", headers=apple)
    assert latest.status_code == 200 and pass_body(latest)["voided"] is False
    # HTTP dates have whole seconds: a copy from the second the pass changed in is sent again (a
    # second change within that second must not be missed); one from after it is not modified.
    last = latest.headers["last-modified"]
    url = f"/{path}v1/passes/pass.it.unipa.esc/{card.escn}"
    assert world.http.get(url, headers={**apple, "If-Modified-Since": last}).status_code == 200
    whole = email.utils.parsedate_to_datetime(last).replace(tzinfo=None)
    with world.engine.begin() as conn:  # the pass last changed exactly on that second
        conn.execute(update(WalletPass).where(WalletPass.escn == card.escn).values(apple_updated_at=whole))
    assert world.http.get(url, headers={**apple, "If-Modified-Since": last}).status_code == 304
    # The card goes INACTIVE: once its pass follows, the device learns it changed; the new pass is voided.
    with world.engine.begin() as conn:
        conn.execute(update(Card).where(Card.escn == card.escn).values(desired_status="INACTIVE"))
    devices = f"/{path}v1/devices/device-1/registrations/pass.it.unipa.esc"
    assert world.http.get(devices, params=since).status_code == 204  # not before the pass follows
    world.follow()
    changed = world.http.get(devices, params=since)
    assert changed.status_code == 200 and changed.json()["serialNumbers"] == [card.escn]
    latest = world.http.get(url, headers={**apple, "If-Modified-Since": last})
    assert latest.status_code == 200 and pass_body(latest)["voided"] is True
    assert world.http.post(f"/{path}v1/log", json={"logs": ["something"]}).status_code == 200
    assert world.http.delete(reg, headers=apple).status_code == 200
    assert world.http.get(f"/{path}v1/devices/device-1/registrations/pass.it.unipa.esc").status_code == 204


def test_the_save_to_google_wallet_link(world: World) -> None:
    card = world.unipa[0]
    for path in (
        f"/v1/cards/{card.escn}/google-wallet",
        f"/v1/universities/unipa/students/{card.matricola}/google-wallet",
    ):
        r = get(world, path, "app_pa")
        assert r.status_code == 200 and r.headers["cache-control"] == "no-store", r.text
        (obj,) = verified_claims(r.json()["save_url"], world.google_public)["payload"]["genericObjects"]
        assert obj["barcode"]["value"].endswith(card.escn) and obj["state"] == "ACTIVE"
    inactive = get(world, f"/v1/cards/{world.unipa[2].escn}/google-wallet", "app_pa").json()["save_url"]
    assert (
        verified_claims(inactive, world.google_public)["payload"]["genericObjects"][0]["state"] == "INACTIVE"
    )
    assert get(world, f"/v1/cards/{card.escn}/google-wallet", "app_fe").status_code == 404
    assert get(world, f"/v1/cards/{card.escn}/google-wallet", "vendor_pa").status_code == 403
    r = get(world, f"/v1/cards/{world.unife[0].escn}/google-wallet", "app_fe")
    assert r.status_code == 404 and r.json()["error"]["code"] == "wallet_not_configured"


def test_a_retired_cards_device_gets_its_stored_voided_pass_without_a_name(world: World) -> None:
    """A card retired because its career changed person: its career names someone else now, so the
    device holding its pass gets the voided pass the asset stored, with no name; nobody else gets one."""
    card = world.unipa[2]
    with world.engine.begin() as conn:
        conn.execute(update(Card).where(Card.escn == card.escn).values(retired_at=dt.datetime(2026, 1, 10)))
    try:
        world.follow()
        token = pass_auth_token(b"a-deployment-secret-for-tests", "pass.it.unipa.esc", card.escn)
        latest = world.http.get(
            f"/apple/v1/passes/pass.it.unipa.esc/{card.escn}", headers={"Authorization": f"ApplePass {token}"}
        )
        assert latest.status_code == 200, latest.text
        body = pass_body(latest)
        assert body["voided"] is True and body["generic"]["primaryFields"][0]["value"] == "-"
        assert get(world, f"/v1/cards/{card.escn}/pass.pkpass", "app_pa").status_code == 404
    finally:  # the module's other tests see the card as it was
        with world.engine.begin() as conn:
            conn.execute(update(Card).where(Card.escn == card.escn).values(retired_at=None))
