"""Apple's push notification service for Wallet passes (Apple's "Updating a pass" and "Sending
notification requests to APNs"): when a card's pass changes, every device that registered for it gets
an empty push; the device then asks our pass web service what changed and fetches the pass again.

HTTP/2 (``h2``) to ``<url>/3/device/<push token>``, TLS client authentication with the university's
Pass Type ID certificate, ``apns-topic`` the pass type identifier, body ``{}``. Off by default
(``[wallet] apns_push``): a deployment without Apple's certificate, or a test machine, pushes nothing.
"""

from __future__ import annotations

import ssl
from enum import StrEnum
from pathlib import Path
from urllib.parse import quote

import httpx

from etl.errors import ConfigError

APNS_URL = "https://api.push.apple.com"


class Pushed(StrEnum):
    SENT = "sent"
    GONE = "gone"  # the device token is no longer valid (410, or 400 BadDeviceToken): forget it
    FAILED = "failed"  # try again on the next change


class ApnsClient:
    def __init__(
        self, url: str, certificate: Path, key: Path, key_password: str | None = None,
        ca_file: Path | None = None, timeout_s: float = 10.0,
    ) -> None:  # fmt: skip
        try:
            context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
            context.load_cert_chain(certificate, key, password=key_password)
        except (OSError, ssl.SSLError) as e:  # SSLError is an OSError; the reason, never the password
            raise ConfigError(f"apns: certificate, key or CA file unusable: {e.strerror or e}") from None
        self.url = url.rstrip("/")
        self.http = httpx.Client(http2=True, verify=context, timeout=timeout_s)
        self.failure: str | None = None  # the last failure's one-line reason (no token, no name)

    def close(self) -> None:
        self.http.close()

    def push(self, topic: str, push_token: str) -> Pushed:
        try:
            answer = self.http.post(
                f"{self.url}/3/device/{quote(push_token, safe='')}",
                content=b"{}",
                headers={"apns-topic": topic},  # a pass update: no alert, no push type of its own
            )
        except httpx.HTTPError as e:
            self.failure = f"APNs unreachable: {type(e).__name__}"
            return Pushed.FAILED
        if answer.status_code == 200:
            return Pushed.SENT
        reason = _reason(answer)
        if answer.status_code == 410 or reason in ("BadDeviceToken", "Unregistered"):
            return Pushed.GONE
        self.failure = f"APNs HTTP {answer.status_code} {reason}".strip()
        return Pushed.FAILED


def _reason(answer: httpx.Response) -> str:
    try:
        return str(answer.json().get("reason", ""))[:40]
    except ValueError:
        return ""
