"""Google Wallet (issue 24, item 2, first part): the "Save to Google Wallet" JWT verifies with the
service account's public key and carries the card's generic object with the ESC QR; its state follows
the card; the settings table is validated. Over the REST service in tests/test_api_wallet.py."""

from __future__ import annotations

import base64
import datetime as dt
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from etl.domain.states import CardStatus
from etl.errors import ConfigError
from etl.wallet.apple import PassCard
from etl.wallet.google import SAVE_URL, GoogleIssuer, GoogleWalletConfig
from tests.fixtures.wallet import make_google_key

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
