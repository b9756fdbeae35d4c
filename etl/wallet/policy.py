"""``[wallet]``: what the wallets do beyond serving passes: Apple's push notifications (off by default:
they need Apple's production certificate and reach api.push.apple.com)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from etl.errors import ConfigError
from etl.wallet.apns import APNS_URL

WALLET_KEYS = frozenset(("apns_push", "apns_url", "apns_ca_file"))
WALLET_SECRET_ENV = "ESC_SYNC_WALLET_SECRET"  # enables Apple's pass web service and its tokens


@dataclass(frozen=True)
class WalletPolicy:
    apns_push: bool = False
    apns_url: str = APNS_URL
    apns_ca_file: Path | None = None  # whom to trust for apns_url; default the system's CAs

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any], home: Path) -> WalletPolicy:
        push = raw.get("apns_push", False)
        if not isinstance(push, bool):
            raise ConfigError(f"wallet: field apns_push: {push!r} must be true or false")
        url = raw.get("apns_url", APNS_URL)
        if not isinstance(url, str) or not url.startswith("https://"):
            raise ConfigError(f"wallet: field apns_url: {url!r} is not an https URL")
        ca = raw.get("apns_ca_file")
        if ca is not None and (not isinstance(ca, str) or not ca.strip()):
            raise ConfigError(f"wallet: field apns_ca_file: {ca!r} must be a file's path")
        return cls(push, url, Path(ca.replace("{home}", str(home))) if ca else None)
