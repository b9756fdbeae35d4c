"""Apple Wallet passes (``.pkpass``) for ESC cards.

A pass is a ZIP of ``pass.json``, its images, ``manifest.json`` (the SHA-1 of every other file) and
``signature``: a *detached* PKCS#7 (DER) signature of the manifest by the university's Pass Type ID
certificate, carrying Apple's WWDR intermediate (Apple's "Building a pass" and "Signing a pass"). Built
on ``cryptography`` directly: the ESC community's ``edutap-wallet-apple`` (1.0.0a5, alpha) signs the
manifest *attached* by default, which is not the form Apple specifies, and brings pydantic-settings,
structlog, PyYAML and HTTP/2 along for what is here about eighty lines.

The style is ``generic``, not ``storeCard``: Apple keeps store cards for loyalty, discount and gift
cards; an identity card such as a student card is a generic pass (primary field: the holder's name).
The barcode is the card's ESC QR: its message is the verifier URL the printed badge encodes.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import io
import json
import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding, load_pem_private_key
from cryptography.hazmat.primitives.serialization.pkcs7 import PKCS7Options, PKCS7SignatureBuilder

from etl.domain.states import CardStatus
from etl.errors import ConfigError, check_keys

ESC_BLUE = "rgb(0, 51, 153)"  # the EU flag's blue, as the ESC's own artwork uses
WHITE = "rgb(255, 255, 255)"
ROME = ZoneInfo("Europe/Rome")
_FIXED_TIME = (2020, 1, 1, 0, 0, 0)  # ZIP entry times: nothing of the build time but the signature


@dataclass(frozen=True)
class PassSigner:
    """A university's Pass Type ID: identifiers from the TOML, certificate and key from files."""

    pass_type_identifier: str
    team_identifier: str
    certificate: x509.Certificate
    key: PrivateKeyTypes
    wwdr: x509.Certificate

    @classmethod
    def from_pem(
        cls, pass_type_identifier: str, team_identifier: str, certificate: bytes, key: bytes, wwdr: bytes,
        key_password: bytes | None = None,
    ) -> PassSigner:  # fmt: skip
        try:
            cert = x509.load_pem_x509_certificate(certificate)
            private = load_pem_private_key(key, password=key_password)
            intermediate = x509.load_pem_x509_certificate(wwdr)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"apple wallet: certificate, key or WWDR certificate unreadable: {e}") from None
        return cls(pass_type_identifier, team_identifier, cert, private, intermediate)

    @classmethod
    def from_files(
        cls, pass_type_identifier: str, team_identifier: str, certificate: Path, key: Path, wwdr: Path,
        key_password: bytes | None = None,
    ) -> PassSigner:  # fmt: skip
        try:
            cert, private, intermediate = (p.read_bytes() for p in (certificate, key, wwdr))
        except OSError as e:
            raise ConfigError(f"apple wallet: {e.filename}: {e.strerror}") from None
        return cls.from_pem(
            pass_type_identifier, team_identifier, cert, private, intermediate, key_password=key_password
        )

    def sign(self, manifest: bytes) -> bytes:
        """The detached PKCS#7 signature Apple specifies: SHA-256, the WWDR certificate included."""
        builder = (
            PKCS7SignatureBuilder()
            .set_data(manifest)
            .add_signer(self.certificate, self.key, hashes.SHA256())  # type: ignore[arg-type]
            .add_certificate(self.wwdr)
        )
        return builder.sign(Encoding.DER, [PKCS7Options.DetachedSignature, PKCS7Options.Binary])


@dataclass(frozen=True)
class PassCard:
    """What a pass shows: one registered card and its holder."""

    escn: str
    qr_payload: str  # the verifier URL, https://s.esc-r.eu/<ESCN>
    full_name: str
    university: str  # its name
    expires_at: dt.date
    status: CardStatus | str  # ACTIVE, INACTIVE, EXPIRED (as the badge shows it)
    academic_year: int


def pass_json(
    card: PassCard,
    signer: PassSigner,
    *,
    authentication_token: str | None = None,
    web_service_url: str | None = None,
) -> dict[str, Any]:
    """``pass.json``: Apple's required keys, the QR, the holder, the university, expiry and status.
    A card that is no longer ACTIVE gives a voided pass; the expiry is the end of the card's last
    day (Italian time), so Wallet greys it out when the card does."""
    valid_until = dt.datetime.combine(card.expires_at + dt.timedelta(days=1), dt.time(), ROME)
    barcode = {
        "format": "PKBarcodeFormatQR",
        "message": card.qr_payload,
        "messageEncoding": "iso-8859-1",
        "altText": card.escn,
    }
    body: dict[str, Any] = {
        "formatVersion": 1,
        "passTypeIdentifier": signer.pass_type_identifier,
        "teamIdentifier": signer.team_identifier,
        "serialNumber": card.escn,
        "organizationName": card.university,
        "description": f"European Student Card, {card.university}",
        "logoText": "European Student Card",
        "foregroundColor": WHITE,
        "labelColor": WHITE,
        "backgroundColor": ESC_BLUE,
        "barcodes": [barcode],
        "barcode": barcode,  # iOS before 9 reads only this one
        "expirationDate": valid_until.isoformat(),
        "voided": str(card.status) != CardStatus.ACTIVE,
        "generic": {
            "primaryFields": [{"key": "holder", "label": "STUDENT", "value": card.full_name}],
            "secondaryFields": [{"key": "university", "label": "UNIVERSITY", "value": card.university}],
            "auxiliaryFields": [
                {
                    "key": "expires",
                    "label": "VALID UNTIL",
                    "value": card.expires_at.isoformat(),
                    "dateStyle": "PKDateStyleMedium",
                },
                {"key": "status", "label": "STATUS", "value": str(card.status)},
            ],
            "backFields": [
                {"key": "escn", "label": "European Student Card Number", "value": card.escn},
                {"key": "verify", "label": "Verify this card", "value": card.qr_payload},
                {
                    "key": "year",
                    "label": "Academic year",
                    "value": f"{card.academic_year}/{card.academic_year + 1}",
                },
            ],
        },
    }
    if web_service_url and authentication_token:
        if len(authentication_token) < 16:
            raise ValueError("a pass's authenticationToken must have at least 16 characters")
        body |= {"webServiceURL": web_service_url, "authenticationToken": authentication_token}
    return body


def build_pkpass(body: Mapping[str, Any], images: Mapping[str, bytes], signer: PassSigner) -> bytes:
    """The ``.pkpass``: ``pass.json``, the images (``icon.png`` is required), ``manifest.json`` with
    each file's SHA-1, and the manifest's signature (which carries its signing time)."""
    if "icon.png" not in images:
        raise ValueError("a pass needs icon.png")
    files = {"pass.json": json.dumps(body, ensure_ascii=False, sort_keys=True).encode("utf-8"), **images}
    manifest = json.dumps(
        {name: hashlib.sha1(data, usedforsecurity=False).hexdigest() for name, data in sorted(files.items())},
        sort_keys=True,
    ).encode()
    files |= {"manifest.json": manifest, "signature": signer.sign(manifest)}
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(zipfile.ZipInfo(name, _FIXED_TIME), data, zipfile.ZIP_DEFLATED)
    return out.getvalue()


def pass_images(logo_png: bytes | None) -> dict[str, bytes]:
    """``icon.png`` (29 pt, required; shown on the lock screen and in notifications) and ``logo.png``
    (top left, at most 160×50 pt), each also @2x: from the university's PNG logo when there is one,
    else a plain ESC-blue square."""
    from PIL import Image

    source = Image.open(io.BytesIO(logo_png)).convert("RGBA") if logo_png else None

    def png(size: tuple[int, int]) -> bytes:
        canvas = Image.new("RGBA", size, (0, 51, 153, 255))
        if source is not None:
            art = source.copy()
            art.thumbnail(size)
            canvas.paste(art, ((size[0] - art.width) // 2, (size[1] - art.height) // 2), art)
        out = io.BytesIO()
        canvas.save(out, "PNG", optimize=True)
        return out.getvalue()

    return {
        "icon.png": png((29, 29)), "icon@2x.png": png((58, 58)),
        "logo.png": png((50, 50)), "logo@2x.png": png((100, 100)),
    }  # fmt: skip


APPLE_KEYS = frozenset(
    ("pass_type_id", "team_id", "certificate", "key", "wwdr_certificate", "key_password_env")
)


@dataclass(frozen=True)
class AppleWalletConfig:
    """``[atenei.apple_wallet]``: the Pass Type ID and team from Apple's developer account; the PEM
    files of the certificate, its key and Apple's WWDR intermediate are named here, never held here
    (the key's password, if any, comes from the environment variable ``key_password_env`` names)."""

    pass_type_id: str
    team_id: str
    certificate: Path
    key: Path
    wwdr_certificate: Path
    key_password_env: str | None = None

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any], who: str, home: Path) -> AppleWalletConfig:
        where = f"{who}: apple_wallet"
        check_keys(where, raw, APPLE_KEYS)

        def text(name: str) -> str:
            value = raw.get(name)
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"{where}: field {name}: must be a non-empty string")
            return value.strip()

        password_env = raw.get("key_password_env")
        if password_env is not None and (not isinstance(password_env, str) or not password_env.isupper()):
            raise ConfigError(f"{where}: field key_password_env: the NAME of an environment variable")
        paths = {
            n: Path(text(n).replace("{home}", str(home))) for n in ("certificate", "key", "wwdr_certificate")
        }
        return cls(text("pass_type_id"), text("team_id"), **paths, key_password_env=password_env)

    def signer(self) -> PassSigner:
        password = os.environ.get(self.key_password_env) if self.key_password_env else None
        return PassSigner.from_files(
            self.pass_type_id, self.team_id, self.certificate, self.key, self.wwdr_certificate,
            key_password=password.encode() if password else None,
        )  # fmt: skip


def pass_auth_token(secret: bytes, pass_type_id: str, serial: str) -> str:
    """The pass's ``authenticationToken`` for Apple's web service: an HMAC of the pass's identity under
    the deployment's secret (``ESC_SYNC_WALLET_SECRET``), so nothing is stored and it cannot be guessed."""
    mac = hmac.new(secret, f"{pass_type_id}\n{serial}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode("ascii").rstrip("=")


def token_matches(secret: bytes, pass_type_id: str, serial: str, token: str) -> bool:
    return hmac.compare_digest(pass_auth_token(secret, pass_type_id, serial), token)
