"""How the REST service guards itself: ``[api]`` in the configuration, parsed and checked here.

``token_days``: how long a new token lives unless ``tokens create --expires`` says otherwise (0: never).
``matricola_rate_per_minute``: the default per-token allowance of lookups by matricola, kept far below
the general rate because sequential matricole are guessable and each answer names a student (0: lookups
by ESCN only). ``failed_auth_per_minute``: failed authentications one client address may make before
its requests are answered 429. ``not_found_share``/``not_found_min``: a token whose lookups in the last
minute found nothing at least that often (and at least that many times) is logged and throttled.
``trusted_proxies``: addresses (or CIDR networks) whose ``X-Forwarded-For`` names the client.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from etl.errors import ConfigError

API_KEYS = frozenset(
    (
        "public_url",
        "token_days",
        "matricola_rate_per_minute",
        "failed_auth_per_minute",
        "not_found_share",
        "not_found_min",
        "trusted_proxies",
    )
)
MAX_RATE = 1_000_000


def _int(raw: Mapping[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = raw.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"api: field {name}: {value!r} must be an integer from {low} to {high}")
    return value


@dataclass(frozen=True)
class ApiPolicy:
    token_days: int = 365
    matricola_rate_per_minute: int = 60
    failed_auth_per_minute: int = 30
    not_found_share: float = 0.5
    not_found_min: int = 30
    trusted_proxies: tuple[str, ...] = ()

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> ApiPolicy:
        share = raw.get("not_found_share", cls.not_found_share)
        if isinstance(share, bool) or not isinstance(share, int | float) or not 0 < share <= 1:
            raise ConfigError(f"api: field not_found_share: {share!r} must be a share in (0, 1]")
        proxies = raw.get("trusted_proxies", [])
        if not isinstance(proxies, list) or not all(isinstance(p, str) for p in proxies):
            raise ConfigError('api: field trusted_proxies: must be a list of addresses, e.g. ["10.0.0.5"]')
        for p in proxies:
            try:
                ipaddress.ip_network(p, strict=False)
            except ValueError:
                message = f"api: field trusted_proxies: {p!r} is not an IP address or network"
                raise ConfigError(message) from None
        return cls(
            token_days=_int(raw, "token_days", cls.token_days, 0, 3660),
            matricola_rate_per_minute=_int(
                raw, "matricola_rate_per_minute", cls.matricola_rate_per_minute, 0, MAX_RATE
            ),
            failed_auth_per_minute=_int(
                raw, "failed_auth_per_minute", cls.failed_auth_per_minute, 1, MAX_RATE
            ),
            not_found_share=float(share),
            not_found_min=_int(raw, "not_found_min", cls.not_found_min, 1, MAX_RATE),
            trusted_proxies=tuple(proxies),
        )
