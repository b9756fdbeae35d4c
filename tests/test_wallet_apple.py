"""Apple Wallet passes (issue 24, item 1): a test root, WWDR intermediate and Pass Type ID certificate
made here; the .pkpass unzips, every SHA-1 in the manifest matches, the detached signature verifies
against the chain (OpenSSL, as Wallet would) and fails for an altered manifest, pass.json carries
Apple's required keys with the card's QR, and a card that is not ACTIVE gives a voided pass."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import subprocess
import zipfile
from pathlib import Path

import pytest

from etl.domain.states import CardStatus
from etl.errors import ConfigError
from etl.wallet.apple import PassCard, PassSigner, build_pkpass, pass_images, pass_json
from tests.fixtures.wallet import KEY_PASSWORD, make_chain

ESCN = "25474cc0-ddff-103f-8000-001999912345"
CARD = PassCard(
    escn=ESCN,
    qr_payload=f"https://s.esc-r.eu/{ESCN}",
    full_name="Zoë Ñúñez-D'Amico",
    university="Università Demo di Palermo",
    expires_at=dt.date(2026, 10, 31),
    status=CardStatus.ACTIVE,
    academic_year=2025,
)
REQUIRED = {
    "formatVersion": int, "passTypeIdentifier": str, "serialNumber": str, "teamIdentifier": str,
    "organizationName": str, "description": str,
}  # fmt: skip


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_chain(tmp_path_factory.mktemp("apple-chain"))


@pytest.fixture(scope="module")
def signer(chain: dict[str, Path]) -> PassSigner:
    return PassSigner.from_files(
        "pass.it.unipa.esc",
        "ABCDE12345",
        chain["pass"],
        chain["key"],
        chain["wwdr"],
        key_password=KEY_PASSWORD,
    )


def _open(pkpass: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(pkpass)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _verifies(tmp: Path, chain: dict[str, Path], manifest: bytes, signature: bytes) -> bool:
    (tmp / "manifest.json").write_bytes(manifest)
    (tmp / "signature").write_bytes(signature)
    done = subprocess.run(
        ["openssl", "cms", "-verify", "-binary", "-inform", "DER", "-in", str(tmp / "signature"),
         "-content", str(tmp / "manifest.json"), "-CAfile", str(chain["root"]), "-purpose", "any",
         "-out", "/dev/null"],
        capture_output=True, timeout=30,
    )  # fmt: skip
    return done.returncode == 0


def test_a_pass_unzips_with_matching_digests_and_a_signature_that_verifies(
    signer: PassSigner, chain: dict[str, Path], tmp_path: Path
) -> None:
    files = _open(build_pkpass(pass_json(CARD, signer), pass_images(None), signer))
    assert {"pass.json", "manifest.json", "signature", "icon.png", "icon@2x.png", "logo.png"} <= set(files)
    manifest = json.loads(files["manifest.json"])
    assert set(manifest) == set(files) - {"manifest.json", "signature"}
    for name, digest in manifest.items():
        assert hashlib.sha1(files[name], usedforsecurity=False).hexdigest() == digest, name
    assert _verifies(tmp_path, chain, files["manifest.json"], files["signature"])
    # Detached: the signature does not carry the manifest, and any change to it breaks the signature.
    assert files["manifest.json"] not in files["signature"]
    altered = files["manifest.json"].replace(b'"icon.png": "', b'"icon.png": "0')
    assert not _verifies(tmp_path, chain, altered, files["signature"])


def test_pass_json_has_apples_keys_and_the_cards_qr(signer: PassSigner) -> None:
    body = json.loads(_open(build_pkpass(pass_json(CARD, signer), pass_images(None), signer))["pass.json"])
    for key, kind in REQUIRED.items():
        assert isinstance(body[key], kind), key
    assert body["formatVersion"] == 1 and body["serialNumber"] == ESCN
    assert body["passTypeIdentifier"] == "pass.it.unipa.esc" and body["teamIdentifier"] == "ABCDE12345"
    qr = body["barcodes"][0]
    assert qr == body["barcode"] and qr["format"] == "PKBarcodeFormatQR"
    assert qr["message"] == f"https://s.esc-r.eu/{ESCN}" and qr["messageEncoding"] == "iso-8859-1"
    fields = {f["key"]: f["value"] for part in body["generic"].values() for f in part}
    assert fields["holder"] == "Zoë Ñúñez-D'Amico" and fields["university"] == CARD.university
    assert fields["status"] == "ACTIVE" and body["voided"] is False
    # Wallet greys the pass out when the card's last day (Italian time) is over.
    assert dt.datetime.fromisoformat(body["expirationDate"]) == dt.datetime(
        2026, 11, 1, tzinfo=dt.timezone(dt.timedelta(hours=1))
    )
    assert "webServiceURL" not in body  # only with the web service and a token


@pytest.mark.parametrize("status", [CardStatus.INACTIVE, "EXPIRED"])
def test_a_card_that_is_not_active_gives_a_voided_pass(signer: PassSigner, status: str) -> None:
    from dataclasses import replace

    body = pass_json(replace(CARD, status=status), signer)
    assert (
        body["voided"] is True
        and {"key": "status", "label": "STATUS", "value": str(status)} in (body["generic"]["auxiliaryFields"])
    )


def test_the_web_service_needs_a_long_enough_token(signer: PassSigner) -> None:
    body = pass_json(CARD, signer, authentication_token="x" * 32, web_service_url="https://esc.example/api/")
    assert body["authenticationToken"] == "x" * 32 and body["webServiceURL"] == "https://esc.example/api/"
    with pytest.raises(ValueError, match="at least 16"):
        pass_json(CARD, signer, authentication_token="short", web_service_url="https://esc.example/api/")


def test_unreadable_certificates_are_one_line(chain: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"apple wallet: .*missing\.pem: No such file"):
        PassSigner.from_files("p", "t", tmp_path / "missing.pem", chain["key"], chain["wwdr"])
    with pytest.raises(ConfigError, match="unreadable"):
        PassSigner.from_files("p", "t", chain["pass"], chain["key"], chain["wwdr"], key_password=b"wrong")
    with pytest.raises(ValueError, match=r"icon\.png"):
        build_pkpass({}, {}, PassSigner.from_files(
            "p", "t", chain["pass"], chain["key"], chain["wwdr"], key_password=KEY_PASSWORD))  # fmt: skip


def test_the_university_logo_makes_the_icon(signer: PassSigner) -> None:
    from PIL import Image

    red = io.BytesIO()
    Image.new("RGBA", (200, 100), (255, 0, 0, 255)).save(red, "PNG")
    images = pass_images(red.getvalue())
    icon = Image.open(io.BytesIO(images["icon@2x.png"]))
    assert icon.size == (58, 58) and icon.getpixel((29, 29))[:3] == (255, 0, 0)
    plain = Image.open(io.BytesIO(pass_images(None)["icon.png"]))
    assert plain.size == (29, 29) and plain.getpixel((14, 14))[:3] == (0, 51, 153)
