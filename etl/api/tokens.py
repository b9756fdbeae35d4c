"""API bearer tokens: creation (the token is returned once), listing, revocation and expiry.

A token is ``escs_`` + 43 URL-safe characters (256 random bits). Only its SHA-256 is stored: a fast
hash is enough for a 256-bit secret (nobody can brute-force it), and lookups stay one indexed query.
The first characters are kept as ``prefix`` so an operator can tell tokens apart in listings.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import Engine, insert, select, update

from etl.errors import EscSyncError
from etl.store.models import ApiToken, utcnow

TOKEN_PREFIX = "escs_"
EXPORTS_READ = "exports:read"
BADGES_READ = "badges:read"
SCOPES = (EXPORTS_READ, BADGES_READ)
DEFAULT_RATE_PER_MINUTE = 600
DEFAULT_MATRICOLA_RATE_PER_MINUTE = 60
MAX_RATE_PER_MINUTE = 1_000_000
PREFIX_CHARS = 12  # "escs_" + 7 random characters: recognisable, still 216 secret bits left
_TOKEN_RE = re.compile(r"escs_[A-Za-z0-9_-]{43}")


@dataclass(frozen=True)
class NewToken:
    id: int
    token: str  # shown once, never stored
    name: str
    scopes: tuple[str, ...]
    institutions: tuple[str, ...]
    rate_per_minute: int
    matricola_rate_per_minute: int
    expires_at: dt.datetime | None


@dataclass(frozen=True)
class TokenInfo:
    id: int
    name: str
    prefix: str
    scopes: tuple[str, ...]
    institutions: tuple[str, ...]
    rate_per_minute: int
    matricola_rate_per_minute: int
    created_at: dt.datetime
    last_used_at: dt.datetime | None
    revoked_at: dt.datetime | None
    expires_at: dt.datetime | None


def generate_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def looks_like_token(token: str) -> bool:
    """Well-formed tokens only reach the database; anything else is rejected without a query."""
    return _TOKEN_RE.fullmatch(token) is not None


def parse_expiry(text: str | None, now: dt.datetime, default_days: int) -> dt.datetime | None:
    """``tokens create --expires``: ``90d`` (days from now), ``2027-06-30`` (the end of that day, UTC) or
    ``never``; none given: ``default_days`` from now (``[api] token_days``; 0 means never)."""
    if text is None:
        return now + dt.timedelta(days=default_days) if default_days else None
    text = text.strip().lower()
    if text == "never":
        return None
    if text.endswith("d") and text[:-1].isdigit():
        days = int(text[:-1])
        if not 1 <= days <= 3660:
            raise EscSyncError("tokens create: --expires in days must be 1d to 3660d")
        return now + dt.timedelta(days=days)
    try:
        day = dt.date.fromisoformat(text)
    except ValueError:
        raise EscSyncError(
            f"tokens create: --expires {text!r}: give days (90d), a date (2027-06-30) or never"
        ) from None
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time())
    if end <= now:
        raise EscSyncError(f"tokens create: --expires {text}: that day is past")
    return end


def split_words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


def check_request(
    name: str, scopes: Iterable[str], institutions: Iterable[str], rate_per_minute: int, known: Sequence[str]
) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """Validate a creation request; return the name, scopes and institutions in canonical order."""
    name = name.strip() if isinstance(name, str) else ""
    if not name or len(name) > 100 or any(ord(c) < 32 for c in name):
        raise EscSyncError("tokens create: --name must be 1-100 printable characters")
    wanted = set(scopes)
    if not wanted:
        raise EscSyncError(f"tokens create: give at least one --scope ({', '.join(SCOPES)})")
    unknown = sorted(wanted - set(SCOPES))
    if unknown:
        raise EscSyncError(f"tokens create: unknown scope {unknown[0]!r} (one of {', '.join(SCOPES)})")
    codes = list(dict.fromkeys(institutions))
    if not codes:
        raise EscSyncError("tokens create: give at least one --institution (a university code)")
    for code in codes:
        if code not in known:
            raise EscSyncError(f"tokens create: unknown university {code!r} (configured: {', '.join(known)})")
    if isinstance(rate_per_minute, bool) or not isinstance(rate_per_minute, int):
        raise EscSyncError("tokens create: --rate-per-minute must be an integer")
    if not 1 <= rate_per_minute <= MAX_RATE_PER_MINUTE:
        raise EscSyncError(f"tokens create: --rate-per-minute must be between 1 and {MAX_RATE_PER_MINUTE}")
    return name, tuple(s for s in SCOPES if s in wanted), tuple(sorted(codes))


def create_token(
    engine: Engine,
    *,
    name: str,
    scopes: Iterable[str],
    institutions: Iterable[str],
    known_institutions: Sequence[str],
    rate_per_minute: int = DEFAULT_RATE_PER_MINUTE,
    matricola_rate_per_minute: int = DEFAULT_MATRICOLA_RATE_PER_MINUTE,
    expires_at: dt.datetime | None = None,
) -> NewToken:
    name, scope_list, codes = check_request(name, scopes, institutions, rate_per_minute, known_institutions)
    lookups = matricola_rate_per_minute
    if isinstance(lookups, bool) or not isinstance(lookups, int) or not 0 <= lookups <= MAX_RATE_PER_MINUTE:
        raise EscSyncError(
            "tokens create: --matricola-rate-per-minute must be between 0 (lookups by ESCN only) "
            f"and {MAX_RATE_PER_MINUTE}"
        )
    token = generate_token()
    values = {
        "name": name,
        "token_hash": hash_token(token),
        "prefix": token[:PREFIX_CHARS],
        "scopes": " ".join(scope_list),
        "institutions": " ".join(codes),
        "rate_per_minute": rate_per_minute,
        "matricola_rate_per_minute": lookups,
        "expires_at": expires_at,
        "created_at": utcnow(),
    }
    with engine.begin() as conn:
        token_id = conn.execute(insert(ApiToken).values(**values).returning(ApiToken.id)).scalar_one()
    return NewToken(int(token_id), token, name, scope_list, codes, rate_per_minute, lookups, expires_at)


def list_tokens(engine: Engine) -> list[TokenInfo]:
    # The hash column is deliberately not selected: listings can never leak it.
    t = ApiToken.__table__.c
    stmt = select(
        t.id,
        t.name,
        t.prefix,
        t.scopes,
        t.institutions,
        t.rate_per_minute,
        t.matricola_rate_per_minute,
        t.created_at,
        t.last_used_at,
        t.revoked_at,
        t.expires_at,
    ).order_by(t.id)
    with engine.connect() as conn:
        return [
            TokenInfo(
                id=r.id,
                name=r.name,
                prefix=r.prefix,
                scopes=split_words(r.scopes),
                institutions=split_words(r.institutions),
                rate_per_minute=r.rate_per_minute,
                matricola_rate_per_minute=r.matricola_rate_per_minute,
                created_at=r.created_at,
                last_used_at=r.last_used_at,
                revoked_at=r.revoked_at,
                expires_at=r.expires_at,
            )
            for r in conn.execute(stmt)
        ]


def revoke_token(engine: Engine, token_id: int) -> tuple[TokenInfo, bool]:
    """Revoke a token; return its listing and whether this call revoked it (False: it already was)."""
    t = ApiToken.__table__.c
    with engine.begin() as conn:
        changed = conn.execute(
            update(ApiToken).where(t.id == token_id, t.revoked_at.is_(None)).values(revoked_at=utcnow())
        ).rowcount
    for info in list_tokens(engine):
        if info.id == token_id:
            return info, bool(changed)
    raise EscSyncError(f"tokens revoke: no token with id {token_id} (see `esc-sync tokens list`)")
