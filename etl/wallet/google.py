"""Google Wallet for ESC cards: a generic pass object per card, and the "Save to Google Wallet" link.

The link is ``https://pay.google.com/gp/v/save/<JWT>``: a JWT signed RS256 with the university's
service-account key, whose payload carries the card's generic object (Google's "Generic pass" and
"JWT" references). The object shows the ESC QR (its value is the verifier URL the printed badge
encodes), the holder, the university and the expiry; its ``state`` follows the card (ACTIVE,
INACTIVE, EXPIRED). Signed with ``cryptography`` directly: a JWT is three base64url parts.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from etl.errors import ConfigError, check_keys
from etl.wallet.apple import ESC_BLUE, PassCard

SAVE_URL = "https://pay.google.com/gp/v/save/"
TOKEN_URI = "https://oauth2.googleapis.com/token"  # a key file without its own token_uri uses Google's
SCOPE = "https://www.googleapis.com/auth/wallet_object.issuer"
API_URL = "https://walletobjects.googleapis.com/walletobjects/v1/"
GOOGLE_KEYS = frozenset(("issuer_id", "service_account_key", "api_url"))
_STATES = {"ACTIVE": "ACTIVE", "INACTIVE": "INACTIVE", "EXPIRED": "EXPIRED"}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


@dataclass(frozen=True)
class GoogleIssuer:
    """A university's Google Wallet issuer: its issuer id and service account (email and key)."""

    issuer_id: str
    client_email: str
    key: rsa.RSAPrivateKey
    token_uri: str = TOKEN_URI

    @classmethod
    def from_key_json(cls, issuer_id: str, key_json: bytes) -> GoogleIssuer:
        try:
            account = json.loads(key_json)
            key = load_pem_private_key(account["private_key"].encode(), password=None)
            email = str(account["client_email"])
            token_uri = str(account.get("token_uri") or TOKEN_URI)
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"google wallet: service account key unreadable: {type(e).__name__}") from None
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ConfigError("google wallet: the service account key is not an RSA key")
        return cls(issuer_id, email, key, token_uri)

    def class_id(self, university_code: str) -> str:
        return f"{self.issuer_id}.esc_{university_code}"

    def generic_class(self, university_code: str) -> dict[str, Any]:
        """The university's class: one holder per card (a student card is not to be shared)."""
        return {
            "id": self.class_id(university_code),
            "multipleDevicesAndHoldersAllowedStatus": "ONE_USER_ALL_DEVICES",
        }

    def object_id(self, escn: str) -> str:
        return f"{self.issuer_id}.{escn}"

    def generic_object(self, card: PassCard, university_code: str) -> dict[str, Any]:
        return {
            "id": self.object_id(card.escn),
            "classId": self.class_id(university_code),
            "state": _STATES.get(str(card.status), "INACTIVE"),
            "cardTitle": _text("European Student Card"),
            "header": _text(card.full_name),
            "subheader": _text(card.university),
            "hexBackgroundColor": _hex(ESC_BLUE),
            "barcode": {"type": "QR_CODE", "value": card.qr_payload, "alternateText": card.escn},
            "validTimeInterval": {
                "end": {
                    "date": dt.datetime.combine(card.expires_at + dt.timedelta(days=1), dt.time()).isoformat()
                    + "Z"
                }
            },
            "textModulesData": [
                {"id": "escn", "header": "European Student Card Number", "body": card.escn},
                {
                    "id": "year",
                    "header": "Academic year",
                    "body": f"{card.academic_year}/{card.academic_year + 1}",
                },
            ],
        }

    def sign_jwt(self, claims: Mapping[str, Any]) -> str:
        """``claims`` as a JWT signed RS256 with the service account's key."""
        signing_input = ".".join(
            _b64(json.dumps(part, separators=(",", ":"), ensure_ascii=False).encode())
            for part in ({"alg": "RS256", "typ": "JWT"}, claims)
        )
        signature = self.key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64(signature)}"

    def save_jwt(self, objects: list[Mapping[str, Any]], origins: list[str] | None = None) -> str:
        """The signed JWT of a "Save to Google Wallet" link carrying ``objects``."""
        return self.sign_jwt({
            "iss": self.client_email,
            "aud": "google",
            "typ": "savetowallet",
            "iat": int(dt.datetime.now(dt.UTC).timestamp()),
            "origins": origins or [],
            "payload": {"genericObjects": list(objects)},
        })  # fmt: skip

    def token_assertion(self, now: dt.datetime) -> str:
        """The JWT a service account trades for an access token (OAuth 2.0 JWT bearer grant)."""
        iat = int(now.timestamp())
        return self.sign_jwt(
            {"iss": self.client_email, "scope": SCOPE, "aud": self.token_uri, "iat": iat, "exp": iat + 3600}
        )

    def save_url(self, card: PassCard, university_code: str) -> str:
        return SAVE_URL + self.save_jwt([self.generic_object(card, university_code)])


def _text(value: str) -> dict[str, Any]:
    return {"defaultValue": {"language": "it", "value": value}}


# What an object keeps once its holder is erased: no name, no university, marked inactive (Google's API
# has no delete for objects).
SCRUBBED = {"state": "INACTIVE", "header": _text("-"), "subheader": _text("-"), "textModulesData": []}


def _hex(rgb: str) -> str:
    r, g, b = (int(v) for v in rgb.removeprefix("rgb(").removesuffix(")").split(","))
    return f"#{r:02x}{g:02x}{b:02x}"


@dataclass(frozen=True)
class GoogleWalletConfig:
    """``[atenei.google_wallet]``: the issuer id from the Google Pay & Wallet Console and the path of
    the service account's JSON key (the file, never its content, is named in the TOML)."""

    issuer_id: str
    service_account_key: Path
    api_url: str = API_URL  # Google's; a test points it at etl.wallet.google_emulator

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any], who: str, home: Path) -> GoogleWalletConfig:
        where = f"{who}: google_wallet"
        check_keys(where, raw, GOOGLE_KEYS)
        issuer = raw.get("issuer_id")
        if isinstance(issuer, int) and not isinstance(issuer, bool):
            issuer = str(issuer)
        if not isinstance(issuer, str) or not issuer.isdigit():
            raise ConfigError(f"{where}: field issuer_id: {issuer!r} must be the issuer's number")
        key = raw.get("service_account_key")
        if not isinstance(key, str) or not key.strip():
            raise ConfigError(f"{where}: field service_account_key: the path of the JSON key file")
        api_url = raw.get("api_url", API_URL)
        if not isinstance(api_url, str) or not api_url.startswith(("http://", "https://")):
            raise ConfigError(f"{where}: field api_url: {api_url!r} is not an http(s) URL")
        return cls(issuer, Path(key.replace("{home}", str(home))), api_url.rstrip("/") + "/")

    def issuer(self) -> GoogleIssuer:
        try:
            data = self.service_account_key.read_bytes()
        except OSError as e:
            raise ConfigError(f"google wallet: {e.filename}: {e.strerror}") from None
        return GoogleIssuer.from_key_json(self.issuer_id, data)
