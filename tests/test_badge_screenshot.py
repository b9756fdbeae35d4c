"""Headless Chromium renders the HTML badge served by the API: the screenshot has the expected size,
is not blank, shows the badge's header colour, and the QR code in it decodes to the card's payload.

Chromium cannot send a bearer token, so a small loopback relay fetches the page from the API with the
token and hands Chromium the API's own response (body, Content-Type, Content-Security-Policy).
Debian's ``chromium`` is used (CI installs it); without it the test skips, saying so.
"""

from __future__ import annotations

import datetime as dt
import http.server
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import zxingcpp
from PIL import Image, ImageStat

from etl.api.app import create_app
from etl.api.tokens import create_token
from etl.store.db import make_engine
from etl.store.migrate import upgrade
from tests.api_seed import LiveServer, SeededCard, seed_cards
from tests.fixtures.world import demo_settings

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
