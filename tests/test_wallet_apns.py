"""The APNs client (issue 24, item 1: pushing pass updates) against a loopback APNs that speaks HTTP/2
over TLS only and requires the Pass Type ID certificate: a push arrives as Apple specifies, a dead
device token is reported gone, a server that does not trust the certificate is a one-line failure, and
the [wallet] table is validated."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from etl.errors import ConfigError
from etl.wallet.apns import ApnsClient, Pushed
from etl.wallet.policy import WalletPolicy
from tests.fixtures.apns import ApnsEmulator
from tests.fixtures.wallet import KEY_PASSWORD, make_chain


@pytest.fixture
def apns(tmp_path: Path) -> Iterator[tuple[ApnsEmulator, dict[str, Path]]]:
    chain = make_chain(tmp_path)
    trusted = tmp_path / "client-ca.pem"
    trusted.write_bytes(chain["wwdr"].read_bytes() + chain["root"].read_bytes())
    emulator = ApnsEmulator(tmp_path, client_ca=trusted).start()
    try:
        yield emulator, chain
    finally:
        emulator.stop()


def test_a_push_goes_over_http2_with_the_pass_type_certificate(apns: tuple[ApnsEmulator, dict]) -> None:
    emulator, chain = apns
    emulator.gone.add("dead-token")
    client = ApnsClient(emulator.url, chain["pass"], chain["key"], KEY_PASSWORD.decode(), emulator.ca_file)
    try:
        assert client.push("pass.it.unipa.esc", "a" * 64) is Pushed.SENT
        assert client.push("pass.it.unipa.esc", "dead-token") is Pushed.GONE
    finally:
        client.close()
    first = emulator.pushes[0]
    assert first == {"http_version": "2", "method": "POST", "token": "a" * 64,
                     "topic": "pass.it.unipa.esc", "body": b"{}"}  # fmt: skip


def test_a_server_that_refuses_the_certificate_is_one_line(
    apns: tuple[ApnsEmulator, dict], tmp_path: Path
) -> None:
    emulator, _ = apns
    (tmp_path / "other").mkdir()
    other = make_chain(tmp_path / "other", password=None)  # a certificate the server does not trust
    client = ApnsClient(emulator.url, other["pass"], other["key"], None, emulator.ca_file)
    try:
        assert client.push("pass.it.unipa.esc", "a" * 64) is Pushed.FAILED
    finally:
        client.close()
    assert client.failure is not None and client.failure.startswith("APNs unreachable: ")
    assert "\n" not in client.failure and emulator.pushes == []


def test_the_wallet_table_is_validated(tmp_path: Path) -> None:
    assert WalletPolicy.from_mapping({}, tmp_path) == WalletPolicy()  # off by default
    assert WalletPolicy().apns_push is False and WalletPolicy().apns_url == "https://api.push.apple.com"
    on = WalletPolicy.from_mapping({"apns_push": True, "apns_ca_file": "{home}/ca.pem"}, tmp_path)
    assert on.apns_push and on.apns_ca_file == tmp_path / "ca.pem"
    for bad, field in (({"apns_push": "yes"}, "apns_push"), ({"apns_url": "http://x"}, "apns_url"),
                       ({"apns_ca_file": ""}, "apns_ca_file")):  # fmt: skip
        with pytest.raises(ConfigError, match=f"wallet: field {field}"):
            WalletPolicy.from_mapping(bad, tmp_path)


def test_an_unusable_certificate_or_key_is_a_configuration_error(tmp_path: Path) -> None:
    chain = make_chain(tmp_path)
    with pytest.raises(ConfigError, match=r"^apns: certificate, key or CA file unusable: ") as wrong:
        ApnsClient("https://127.0.0.1:9", chain["pass"], chain["key"], "not-the-password")
    assert "not-the-password" not in str(wrong.value)
    with pytest.raises(ConfigError, match=r"^apns: .*No such file"):
        ApnsClient("https://127.0.0.1:9", tmp_path / "missing.pem", chain["key"], KEY_PASSWORD.decode())
