"""Wallet passes follow their cards, end to end through `esc-sync sync` (Dagster, the Router emulator,
a demo Esse3), on SQLite and PostgreSQL: the `wallet_passes` asset stores every registered card's
Apple pass (0600), creates the university's Google class, pushes the devices holding a changed pass
(over HTTP/2 with the Pass Type ID certificate, to a loopback APNs) and patches the Google object a
student saved (Google's endpoints emulated on loopback); nothing is sent twice; an erased student's
pass file goes and their Google object is scrubbed; Google unreachable fails the step in one line and
the next run delivers (an update, and the scrub of a student erased while Google was down)."""

from __future__ import annotations

import datetime as dt
import io
import json
import stat
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, text

from etl.config import load_settings
from etl.demo.config import DEMO_ATENEI, demo_config_toml
from etl.errors import ExitCode
from etl.render.badge_source import pass_card
from etl.store import wallet as store
from etl.store.db import make_engine
from etl.store.models import Card, Career, WalletPass
from etl.wallet.follow import pass_path
from etl.wallet.google import SAVE_URL
from etl.wallet.google_emulator import Account, GoogleWalletEmulator
from tests.fixtures.apns import ApnsEmulator
from tests.fixtures.wallet import make_chain, make_google_key
from tests.fixtures.world import CliWorld, demo_home, use_home

INST = "unipa"
PASS_TYPE = "pass.it.unipa.esc"
ISSUER = "3388000000012345678"
GENERATED_AT = dt.datetime(2026, 10, 1, 9, 0)

pytestmark = pytest.mark.slow


class World(CliWorld):
    google: GoogleWalletEmulator
    apns: ApnsEmulator

    def cards(self) -> list[Any]:
        """The university's registered cards, with their holder's ESI and PERS_ID."""
        with self.state.connect() as conn:
            return list(conn.execute(text(
                "SELECT c.escn, c.esi, c.stu_id, c.desired_status, k.pers_id FROM cards c "
                "JOIN careers k ON k.institution = c.institution AND k.stu_id = c.stu_id "
                "WHERE c.institution = :i AND c.state = 'registered' AND c.deleted_at IS NULL "
                "AND c.desired_status = 'ACTIVE' ORDER BY c.escn"), {"i": INST}))  # fmt: skip

    def states(self) -> dict[str, Any]:
        with self.state.connect() as conn:
            return {r.escn: r for r in conn.execute(select(WalletPass.__table__))}

    def save_to_google(self, escn: str) -> None:
        """What a student's tap on "Save to Google Wallet" does, against the emulator."""
        settings = load_settings()
        ateneo = settings.ateneo(INST)
        assert ateneo.google_wallet is not None
        with self.state.connect() as conn:
            row = next(r for r in store.pass_rows(conn, INST, 2025) if r.escn == escn)
        card = pass_card(row, ateneo.name, settings.qr_base_url, dt.date.today())
        link = ateneo.google_wallet.issuer().save_url(card, INST)
        saved = httpx.get(link.replace(SAVE_URL, self.google.url + "gp/v/save/"), trust_env=False)
        assert saved.status_code == 200, saved.text

    def stored_pass(self, escn: str) -> dict[str, Any]:
        with zipfile.ZipFile(io.BytesIO(pass_path(self.home, INST, escn).read_bytes())) as archive:
            return json.loads(archive.read("pass.json"))


@pytest.fixture
def world(
    emulator: Any, state_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Iterator[World]:  # fmt: skip
    home, esse3_url = demo_home(tmp_path, INST, seed=5, students=30, first_year=2025, last_year=2025,
                                now=GENERATED_AT)  # fmt: skip
    chain = make_chain(tmp_path)
    key_file, public = make_google_key(tmp_path)
    account = json.loads(key_file.read_text())
    google = GoogleWalletEmulator({account["client_email"]: Account(ISSUER, public)}).start()
    key_file.write_text(json.dumps({**account, "token_uri": google.token_url}))
    apns = ApnsEmulator(tmp_path, client_ca=tmp_path / "client-ca.pem")
    apns.client_ca.write_bytes(chain["wwdr"].read_bytes() + chain["root"].read_bytes())
    apns.start()
    toml = demo_config_toml(emulator.url, atenei=DEMO_ATENEI[1:]).replace("first = 2019", "first = 2025")
    toml += f"""
[atenei.apple_wallet]
pass_type_id = "{PASS_TYPE}"
team_id = "ABCDE12345"
certificate = "{chain["pass"]}"
key = "{chain["key"]}"
wwdr_certificate = "{chain["wwdr"]}"
key_password_env = "TEST_PASS_KEY_PASSWORD"

[atenei.google_wallet]
issuer_id = "{ISSUER}"
service_account_key = "{key_file}"
api_url = "{google.api_url}"

[api]
public_url = "https://esc.example.it/"

[wallet]
apns_push = true
apns_url = "{apns.url}"
apns_ca_file = "{apns.ca_file}"
"""
    monkeypatch.setenv("TEST_PASS_KEY_PASSWORD", "secret")
    monkeypatch.setenv("ESC_SYNC_WALLET_SECRET", "a-deployment-secret-for-tests")
    use_home(monkeypatch, home, toml, state_url)
    w = World(home, make_engine(state_url), make_engine(esse3_url), emulator, capsys)
    w.google, w.apns = google, apns
    try:
        yield w
    finally:
        w.state.dispose()
        w.esse3.dispose()
        google.stop()
        apns.stop()


def test_passes_follow_the_cards_into_both_wallets_and_out_at_erasure(world: World) -> None:
    world.sync()
    cards = world.cards()
    assert len(cards) >= 3
    # Every registered card's pass is stored, private, in a private folder; the class exists.
    for c in cards:
        path = pass_path(world.home, INST, c.escn)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert world.stored_pass(c.escn)["serialNumber"] == c.escn
    assert stat.S_IMODE(pass_path(world.home, INST, cards[0].escn).parent.stat().st_mode) == 0o700
    assert f"{ISSUER}.esc_{INST}" in world.google.state.classes
    assert world.google.state.objects == {}  # nobody saved a pass: nothing of theirs was sent
    assert set(world.states()) == {c.escn for c in cards}

    target, other = cards[0], cards[1]
    world.save_to_google(target.escn)
    assert world.google.state.objects[f"{ISSUER}.{target.escn}"]["state"] == "ACTIVE"
    with world.state.begin() as conn:
        store.register(conn, "device-1", PASS_TYPE, target.escn, "token-alive")
        store.register(conn, "device-2", PASS_TYPE, target.escn, "token-dead")
        store.register(conn, "device-3", PASS_TYPE, other.escn, "token-other")
    world.apns.gone.add("token-dead")

    # A run with nothing changed builds, pushes and sends nothing.
    mtime = pass_path(world.home, INST, target.escn).stat().st_mtime_ns
    calls = len(world.google.state.calls)
    world.sync()
    code, out, err = world.run("materialize", "--partition", f"2025|{INST}")
    assert code == 0, out + err
    assert pass_path(world.home, INST, target.escn).stat().st_mtime_ns == mtime
    assert [m for m, _ in world.google.state.calls[calls:] if m == "PATCH"] == []
    assert world.apns.pushes == []

    # The student is renamed in Esse3: the pass and the saved object say so, the devices are pushed.
    now = dt.datetime.now().replace(microsecond=0)
    with world.esse3.begin() as conn:
        conn.execute(
            text('UPDATE "P01_ANAPER" SET "NOME" = :n, "DATA_MOD" = :t WHERE "PERS_ID" = :p'),
            {"n": "Rinominata", "t": now, "p": target.pers_id},
        )
    world.sync()
    body = world.stored_pass(target.escn)
    assert body["generic"]["primaryFields"][0]["value"].startswith("Rinominata")
    assert body["voided"] is False and body["authenticationToken"]
    obj = world.google.state.objects[f"{ISSUER}.{target.escn}"]
    assert obj["header"]["defaultValue"]["value"].startswith("Rinominata")
    pushed = {p["token"]: p for p in world.apns.pushes}
    assert set(pushed) == {"token-alive", "token-dead"}  # not the other card's device
    assert pushed["token-alive"]["http_version"] == "2" and pushed["token-alive"]["topic"] == PASS_TYPE
    assert pushed["token-alive"]["body"] == b"{}"
    with world.state.connect() as conn:  # the dead device is forgotten, the pass counts as pushed
        assert [r.device_id for r in store.push_tokens(conn, PASS_TYPE, [target.escn])] == ["device-1"]
    state = world.states()[target.escn]
    assert state.pushed_digest == state.apple_digest
    # ... and Apple's web service tells the device this pass changed since its tag.
    with world.state.connect() as conn:
        serials, _ = store.changed_since(
            conn, "device-1", PASS_TYPE, state.apple_updated_at - dt.timedelta(seconds=1)
        )
    assert serials == [target.escn]

    # The badge is annulled: the card goes INACTIVE, and so do both passes.
    with world.esse3.begin() as conn:
        conn.execute(
            text('UPDATE "P01_BADGE" SET "ANN_FLG" = 1, "DATA_MOD" = :t WHERE "STU_ID" = :s'),
            {"t": now + dt.timedelta(seconds=1), "s": target.stu_id},
        )
    world.sync()
    with world.state.connect() as conn:
        card = conn.execute(select(Card.desired_status).where(Card.escn == target.escn)).scalar_one()
    assert card == "INACTIVE"
    assert world.stored_pass(target.escn)["voided"] is True
    assert world.google.state.objects[f"{ISSUER}.{target.escn}"]["state"] == "INACTIVE"

    # The student is erased: the pass file goes at once, the saved object keeps no name.
    code, out, err = world.run("erase", "--institution", INST, "--pers-id", str(target.pers_id))
    assert code == 0, out + err
    assert not pass_path(world.home, INST, target.escn).exists()
    obj = world.google.state.objects[f"{ISSUER}.{target.escn}"]
    assert obj["state"] == "INACTIVE" and "Rinominata" not in json.dumps(obj)
    assert target.escn not in world.states()
    with world.state.connect() as conn:
        assert conn.execute(select(Career.first_name).where(Career.pers_id == target.pers_id)).scalar() == ""


def test_google_unreachable_fails_the_step_in_one_line_and_the_next_run_delivers(world: World) -> None:
    world.sync()
    target = world.cards()[0]
    world.save_to_google(target.escn)
    world.google.state.fail_with = 503
    now = dt.datetime.now().replace(microsecond=0)
    with world.esse3.begin() as conn:
        conn.execute(
            text('UPDATE "P01_ANAPER" SET "NOME" = :n, "DATA_MOD" = :t WHERE "PERS_ID" = :p'),
            {"n": "Ritentata", "t": now, "p": target.pers_id},
        )
    code, out, err = world.run("sync")
    assert code == ExitCode.SERVICE, out + err
    assert err.strip() == (
        f"esc-sync: 1 wallet pass update(s) not delivered (google wallet: HTTP 503 UNAVAILABLE); a rerun "
        f"sends them (2025|{INST})"
    )
    assert world.stored_pass(target.escn)["generic"]["primaryFields"][0]["value"].startswith("Ritentata")
    world.google.state.fail_with = None
    world.sync()  # the failed partition runs again: the object catches up
    obj = world.google.state.objects[f"{ISSUER}.{target.escn}"]
    assert obj["header"]["defaultValue"]["value"].startswith("Ritentata")

    # Erased while Google is down: the file goes at once; the object is scrubbed by the next run.
    world.google.state.fail_with = 503
    code, out, err = world.run("erase", "--institution", INST, "--pers-id", str(target.pers_id))
    assert code == 0, out + err
    assert not pass_path(world.home, INST, target.escn).exists()
    assert "Ritentata" in json.dumps(world.google.state.objects[f"{ISSUER}.{target.escn}"])
    assert target.escn in world.states()  # kept for the retry
    world.google.state.fail_with = None
    code, out, err = world.run("materialize", "--partition", f"2025|{INST}")
    assert code == 0, out + err
    assert "Ritentata" not in json.dumps(world.google.state.objects[f"{ISSUER}.{target.escn}"])
    assert target.escn not in world.states()
