"""Google Wallet (issue 24, item 2): the "Save to Google Wallet" JWT verifies with the service account's
public key and carries the card's generic object with the ESC QR; its state follows the card; the
settings table is validated; the REST client (token, class, patches) against the loopback emulator of
Google's endpoints, and the emulator against Google's rules. Over the REST service in
tests/test_api_wallet.py; following the cards in tests/test_wallet_follow.py."""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from etl.domain.states import CardStatus
from etl.errors import ConfigError
from etl.wallet.apple import PassCard
from etl.wallet.google import SAVE_URL, SCRUBBED, GoogleIssuer, GoogleWalletConfig
from etl.wallet.google_api import GoogleWalletClient, GoogleWalletError, Patched
from etl.wallet.google_emulator import Account, GoogleWalletEmulator
from tests.fixtures.wallet import make_google_key

ISSUER = "3388000000012345678"

ESCN = "25474cc0-ddff-103f-8000-001999912345"
CARD = PassCard(ESCN, f"https://s.esc-r.eu/{ESCN}", "Zoë Ñúñez", "Università Demo di Palermo",
                dt.date(2026, 10, 31), CardStatus.ACTIVE, 2025)  # fmt: skip


def verified_claims(url: str, public: rsa.RSAPublicKey) -> dict[str, Any]:
    """The JWT of a save link, its RS256 signature checked with ``public``; its claims."""
    assert url.startswith(SAVE_URL)
    token = url.removeprefix(SAVE_URL)
    head, body, sig = token.split(".")

    def part(text: str) -> bytes:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))

    public.verify(part(sig), f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256())
    assert json.loads(part(head)) == {"alg": "RS256", "typ": "JWT"}
    return json.loads(part(body))


@pytest.fixture(scope="module")
def issuer_and_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[GoogleIssuer, rsa.RSAPublicKey]:
    path, public = make_google_key(tmp_path_factory.mktemp("google"))
    return GoogleWalletConfig("3388000000012345678", path).issuer(), public


def test_the_save_link_is_a_signed_jwt_carrying_the_cards_qr(issuer_and_key: Any) -> None:
    issuer, public = issuer_and_key
    claims = verified_claims(issuer.save_url(CARD, "unipa"), public)
    assert claims["iss"] == "esc-wallet@unipa-esc.iam.gserviceaccount.com"
    assert claims["aud"] == "google" and claims["typ"] == "savetowallet"
    (obj,) = claims["payload"]["genericObjects"]
    assert obj["id"] == f"3388000000012345678.{ESCN}" and obj["classId"] == "3388000000012345678.esc_unipa"
    assert obj["barcode"] == {"type": "QR_CODE", "value": f"https://s.esc-r.eu/{ESCN}", "alternateText": ESCN}
    assert obj["header"]["defaultValue"]["value"] == "Zoë Ñúñez" and obj["state"] == "ACTIVE"
    assert obj["validTimeInterval"]["end"]["date"] == "2026-11-01T00:00:00Z"


def test_a_tampered_link_does_not_verify(issuer_and_key: Any) -> None:
    issuer, public = issuer_and_key
    url = issuer.save_url(CARD, "unipa")
    head, body, sig = url.removeprefix(SAVE_URL).split(".")
    forged = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    forged["payload"]["genericObjects"][0]["barcode"]["value"] = "https://evil.example/"
    body = base64.urlsafe_b64encode(json.dumps(forged).encode()).decode().rstrip("=")
    with pytest.raises(InvalidSignature):
        verified_claims(f"{SAVE_URL}{head}.{body}.{sig}", public)


@pytest.mark.parametrize(("status", "state"), [(CardStatus.INACTIVE, "INACTIVE"), ("EXPIRED", "EXPIRED")])
def test_the_objects_state_follows_the_card(issuer_and_key: Any, status: str, state: str) -> None:
    issuer, _ = issuer_and_key
    assert issuer.generic_object(replace(CARD, status=status), "unipa")["state"] == state


def test_the_google_wallet_table_is_validated(tmp_path: Path) -> None:
    good = {"issuer_id": 3388000000012345678, "service_account_key": "{home}/sa.json"}
    assert GoogleWalletConfig.from_mapping(good, "university x", tmp_path) == GoogleWalletConfig(
        "3388000000012345678", tmp_path / "sa.json"
    )
    for bad, field in (({**good, "issuer_id": "abc"}, "issuer_id"), ({**good, "key": "x"}, "unknown key"),
                       ({"issuer_id": 1}, "service_account_key")):  # fmt: skip
        with pytest.raises(ConfigError, match=f"university x: google_wallet: .*{field}"):
            GoogleWalletConfig.from_mapping(bad, "university x", tmp_path)
    with pytest.raises(ConfigError, match=r"google wallet: .*sa\.json: No such file"):
        GoogleWalletConfig.from_mapping(good, "university x", tmp_path).issuer()
    (tmp_path / "sa.json").write_text("{}")
    with pytest.raises(ConfigError, match="service account key unreadable: KeyError"):
        GoogleWalletConfig.from_mapping(good, "university x", tmp_path).issuer()


# --- the REST API client against the loopback emulator of Google's endpoints --------------------------


@pytest.fixture
def google(tmp_path: Path) -> Iterator[tuple[GoogleWalletEmulator, GoogleIssuer]]:
    path, public = make_google_key(tmp_path)
    account = json.loads(path.read_text())
    emulator = GoogleWalletEmulator({account["client_email"]: Account(ISSUER, public)}).start()
    path.write_text(json.dumps({**account, "token_uri": emulator.token_url}))
    try:
        yield emulator, GoogleWalletConfig(ISSUER, path).issuer()
    finally:
        emulator.stop()


def test_the_client_makes_the_class_once_and_patches_only_saved_objects(google: Any) -> None:
    emulator, issuer = google
    with GoogleWalletClient(issuer, emulator.api_url) as client:
        assert client.ensure_class(issuer.generic_class("unipa")) is True
        assert client.ensure_class(issuer.generic_class("unipa")) is False  # already there
        obj = issuer.generic_object(CARD, "unipa")
        assert client.patch_object(obj["id"], obj) is Patched.NOT_SAVED  # nobody saved it
        assert emulator.state.objects == {}
        saved = httpx.get(issuer.save_url(CARD, "unipa").replace(SAVE_URL, emulator.url + "gp/v/save/"))
        assert saved.status_code == 200
        inactive = issuer.generic_object(replace(CARD, status=CardStatus.INACTIVE), "unipa")
        assert client.patch_object(obj["id"], inactive) is Patched.UPDATED
        assert emulator.state.objects[obj["id"]]["state"] == "INACTIVE"
        assert client.patch_object(obj["id"], SCRUBBED) is Patched.UPDATED
        assert "Zoë" not in json.dumps(emulator.state.objects[obj["id"]])
    # one access token for all of it
    assert [c for c in emulator.state.calls if c[1] == "/token"] == [("POST", "/token")]


def test_a_revoked_token_is_renewed_once_and_refusals_are_one_line(google: Any, tmp_path: Path) -> None:
    emulator, issuer = google
    with GoogleWalletClient(issuer, emulator.api_url) as client:
        client.ensure_class(issuer.generic_class("unipa"))
        emulator.state.tokens.clear()  # Google forgot the token
        assert client.ensure_class(issuer.generic_class("unipa")) is False
        other = replace(issuer, issuer_id="1111")  # an id of another issuer: Google refuses it
        with pytest.raises(
            GoogleWalletError, match=r"^google wallet: HTTP 403 PERMISSION_DENIED$"
        ) as refused:
            client.patch_object(other.object_id(ESCN), {"state": "INACTIVE"})
        assert refused.value.transient is False  # a person must look: no retrying
        emulator.state.fail_with = 503
        with pytest.raises(GoogleWalletError, match=r"^google wallet: HTTP 503 UNAVAILABLE$") as outage:
            client.patch_object(issuer.object_id(ESCN), {"state": "INACTIVE"})
        assert outage.value.transient is True
    # a key Google does not know cannot get a token
    (tmp_path / "stranger").mkdir()
    stranger, _ = make_google_key(tmp_path / "stranger")
    account = json.loads(stranger.read_text())
    stranger.write_text(json.dumps({**account, "token_uri": emulator.token_url}))
    unknown = GoogleWalletClient(GoogleWalletConfig(ISSUER, stranger).issuer(), emulator.api_url)
    with unknown, pytest.raises(GoogleWalletError, match=r"^google wallet: HTTP 400 invalid_grant$"):
        unknown.ensure_class(issuer.generic_class("unipa"))
    emulator.stop()
    gone = GoogleWalletClient(issuer, emulator.api_url)
    with gone, pytest.raises(GoogleWalletError, match=r"^google wallet unreachable: ConnectError$"):
        gone.ensure_class(issuer.generic_class("unipa"))


def test_the_emulator_holds_to_googles_rules(google: Any) -> None:
    emulator, issuer = google
    api = emulator.api_url
    assert httpx.get(api + f"genericClass/{ISSUER}.esc_unipa").status_code == 401  # no token
    with GoogleWalletClient(issuer, api) as client:
        headers = client._auth()
    cls = issuer.generic_class("unipa")
    assert httpx.post(api + "genericClass", json=cls, headers=headers).status_code == 200
    again = httpx.post(api + "genericClass", json=cls, headers=headers)
    assert again.status_code == 409 and again.json()["error"]["status"] == "ALREADY_EXISTS"
    orphan = {**issuer.generic_object(CARD, "unipa"), "classId": f"{ISSUER}.nope"}
    assert httpx.post(api + "genericObject", json=orphan, headers=headers).status_code == 400
    bad_state = {"state": "GONE"}
    assert (
        httpx.patch(api + f"genericObject/{ISSUER}.{ESCN}", json=bad_state, headers=headers).status_code
        == 400
    )
    assert httpx.get(api + f"genericObject/{ISSUER}.{ESCN}", headers=headers).status_code == 404
    # a save link whose object was changed after signing is refused
    head, body, sig = issuer.save_url(CARD, "unipa").removeprefix(SAVE_URL).split(".")
    forged = body[:-4] + ("AAAA" if body[-4:] != "AAAA" else "BBBB")
    assert httpx.get(emulator.url + f"gp/v/save/{head}.{forged}.{sig}").status_code == 400
    assert emulator.state.objects == {}
