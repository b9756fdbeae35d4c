"""Headless Chromium renders the HTML badge served by the API: the screenshot has the expected size,
is not blank, shows the badge's header colour, and the QR code in it decodes to the card's payload;
under a card whose university issues wallet passes it shows "Add to Apple Wallet" and "Save to Google
Wallet", and both links lead to the card's passes.

Chromium cannot send a bearer token, so a small loopback relay fetches the page from the API with the
token and hands Chromium the API's own response (body, Content-Type, Content-Security-Policy).
Debian's ``chromium`` is used (CI installs it); without it the test skips, saying so.
"""

from __future__ import annotations

import datetime as dt
import html
import http.server
import io
import json
import re
import shutil
import subprocess
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx
import pytest
import zxingcpp
from PIL import Image, ImageStat

from etl.api.app import create_app
from etl.api.tokens import create_token
from etl.store.db import make_engine
from etl.store.migrate import upgrade
from etl.wallet.apple import AppleWalletConfig
from etl.wallet.google import SAVE_URL, GoogleWalletConfig
from tests.api_seed import LiveServer, SeededCard, seed_cards
from tests.fixtures.wallet import make_chain, make_google_key
from tests.fixtures.world import demo_settings
from tests.test_wallet_google import verified_claims

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
WINDOW = (520, 360)  # CSS px: the badge is at most 480 px wide, with 16 px of page padding
SCALE = 2  # device pixels per CSS px: ~6 px per QR module, as on a phone screen
RELAYED_HEADERS = ("content-type", "content-security-policy", "x-content-type-options", "cache-control")


class _Relay(http.server.BaseHTTPRequestHandler):
    api: str = ""
    token: str = ""

    def do_GET(self) -> None:
        r = httpx.get(
            self.api + self.path, headers={"Authorization": f"Bearer {self.token}"}, trust_env=False
        )
        self.send_response(r.status_code)
        for name in RELAYED_HEADERS:
            if name in r.headers:
                self.send_header(name, r.headers[name])
        self.send_header("content-length", str(len(r.content)))
        self.end_headers()
        self.wfile.write(r.content)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def badge_page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, SeededCard]]:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium); CI installs it")
    home = tmp_path_factory.mktemp("screenshot")
    db_url = f"sqlite:///{home / 'state.sqlite'}"
    settings = demo_settings(home, db_url)
    engine = make_engine(db_url)
    upgrade(engine)
    card = seed_cards(engine, settings, "unife", 3)[2]
    token = create_token(
        engine,
        name="screenshot",
        scopes=["badges:read"],
        institutions=["unife"],
        known_institutions=settings.codes,
    ).token
    app = create_app(settings, engine, today=lambda: dt.date(2026, 1, 15))
    with LiveServer(app) as api:
        relay_class = type("Relay", (_Relay,), {"api": api.url, "token": token})
        relay = http.server.ThreadingHTTPServer(("127.0.0.1", 0), relay_class)
        thread = threading.Thread(target=relay.serve_forever, daemon=True)
        thread.start()
        try:
            port = relay.server_address[1]
            yield f"http://127.0.0.1:{port}/v1/universities/unife/students/{card.matricola}/badge.html", card
        finally:
            relay.shutdown()
            relay.server_close()
    engine.dispose()


def screenshot(url: str, out: Path, profile: Path) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    return subprocess.run(
        [
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--hide-scrollbars", f"--force-device-scale-factor={SCALE}", f"--user-data-dir={profile}",
            f"--screenshot={out}", f"--window-size={WINDOW[0]},{WINDOW[1]}", url,
        ],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_html_badge_renders_with_a_readable_qr(badge_page: tuple[str, SeededCard], tmp_path: Path) -> None:
    url, card = badge_page
    out = tmp_path / "badge.png"
    p = screenshot(url, out, tmp_path / "profile")
    assert p.returncode == 0 and out.is_file(), p.stderr[-2000:]
    image = Image.open(out).convert("RGB")
    assert image.size == (WINDOW[0] * SCALE, WINDOW[1] * SCALE)
    stat = ImageStat.Stat(image)
    assert max(stat.stddev) > 40, "the screenshot is blank"
    # The card's header band (#003399 on an active card) is drawn near the top of the badge.
    header = image.crop((40 * SCALE, 20 * SCALE, 460 * SCALE, 36 * SCALE)).getcolors(1_000_000)
    assert header and max(header)[1] == (0, 51, 153)
    found = zxingcpp.read_barcode(image, formats=zxingcpp.BarcodeFormat.QRCode)
    assert found is not None, "no QR code found in the screenshot"
    assert found.text == card.payload  # the screenshot stays in tmp_path (pytest keeps the last runs)


@pytest.fixture(scope="module")
def wallet_page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, SeededCard, Any]]:
    """The badge page of a university that issues both wallets' passes, through the relay."""
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium); CI installs it")
    home = tmp_path_factory.mktemp("wallet-page")
    chain = make_chain(home, password=None)
    google_key, google_public = make_google_key(home)
    settings = demo_settings(home, f"sqlite:///{home / 'state.sqlite'}")
    apple = AppleWalletConfig("pass.it.unife.esc", "ABCDE12345", chain["pass"], chain["key"], chain["wwdr"])
    google = GoogleWalletConfig("3388000000012345678", google_key)
    wallets = {"apple_wallet": apple, "google_wallet": google}
    settings = replace(
        settings, atenei=tuple(replace(a, **wallets) if a.code == "unife" else a for a in settings.atenei)
    )
    engine = make_engine(settings.database_url)
    upgrade(engine)
    card = seed_cards(engine, settings, "unife", 1)[0]
    token = create_token(
        engine, name="page", scopes=["badges:read"], institutions=["unife"], known_institutions=settings.codes
    ).token
    app = create_app(settings, engine, today=lambda: dt.date(2026, 1, 15))
    with LiveServer(app) as api:
        relay = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), type("Relay", (_Relay,), {"api": api.url, "token": token})
        )
        threading.Thread(target=relay.serve_forever, daemon=True).start()
        try:
            port = relay.server_address[1]
            url = f"http://127.0.0.1:{port}/v1/universities/unife/students/{card.matricola}/badge.html"
            yield url, card, google_public
        finally:
            relay.shutdown()
            relay.server_close()
    engine.dispose()


def test_the_badge_page_offers_both_wallets_and_their_links_work(
    wallet_page: tuple[str, SeededCard, Any], tmp_path: Path
) -> None:
    url, card, google_public = wallet_page
    assert CHROMIUM is not None
    dom = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'dom-profile'}", "--dump-dom", url],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert dom.returncode == 0, dom.stderr[-2000:]
    links = dict(re.findall(r'<a class="wallet (apple|google)" href="([^"]+)"', dom.stdout))
    assert set(links) == {"apple", "google"}, dom.stdout[-2000:]
    # "Add to Apple Wallet" leads, beside the page, to the card's signed pass.
    apple = httpx.get(urljoin(url, html.unescape(links["apple"])), trust_env=False)
    assert apple.status_code == 200 and apple.headers["content-type"] == "application/vnd.apple.pkpass"
    with zipfile.ZipFile(io.BytesIO(apple.content)) as archive:
        body = json.loads(archive.read("pass.json"))
    assert body["serialNumber"] == card.escn and body["barcodes"][0]["message"] == card.payload
    # "Save to Google Wallet" is Google's save URL with the card's object, signed by the university.
    save = html.unescape(links["google"])
    assert save.startswith(SAVE_URL)
    (obj,) = verified_claims(save, google_public)["payload"]["genericObjects"]
    assert obj["barcode"]["value"] == card.payload and obj["state"] == "ACTIVE"
    # Both buttons are drawn (black) under the badge.
    out = tmp_path / "page.png"
    p = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
         f"--user-data-dir={tmp_path / 'shot-profile'}", f"--screenshot={out}", "--window-size=520,420", url],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert p.returncode == 0 and out.is_file(), p.stderr[-2000:]
    below = Image.open(out).convert("RGB").crop((0, 330, 520, 420))
    colours = below.getcolors(1_000_000) or []
    assert sum(n for n, rgb in colours if max(rgb) < 30) > 2_000, "no wallet buttons under the badge"
