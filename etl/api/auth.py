"""Bearer authentication, scopes and the per-token rate limits, as FastAPI dependencies.

Order of checks: the client address's failed authentications (else 429), a valid token that is neither
revoked nor expired (else 401, counted against the address), its rate limit for the scope (else 429),
for lookups by matricola their own, lower limit and the not-found throttle (else 403 or 429), then the
scope (else 403). The university check belongs to each route: a filter naming another university is
a 403, a resource of another university a 404 identical to a missing one.

Token lookups are cached for a few seconds (a revocation takes effect within ``cache_seconds``) and
``last_used_at`` is written at most once a ``touch_interval`` per token, so the hot path does no
database work for authentication.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import Request
from sqlalchemy import Engine, select, update
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from etl.api.errors import ApiError
from etl.api.ratelimit import RateLimiter, retry_after_header
from etl.api.throttles import WINDOW_S, FailedAuthThrottle, NotFoundWatch
from etl.api.tokens import hash_token, looks_like_token
from etl.domain.api_policy import ApiPolicy
from etl.store.models import ApiToken, utcnow

log = logging.getLogger("etl.api")

_MAX_CACHED = 10_000
_tokens = ApiToken.__table__
BEARER_SCHEME = {
    "type": "http",
    "scheme": "bearer",
    "description": "an esc-sync API token (`escs_...`, from `esc-sync tokens create`)",
}


@dataclass(frozen=True, slots=True)
class Principal:
    token_id: int
    prefix: str
    scopes: frozenset[str]
    institutions: frozenset[str]
    rate_per_minute: int
    matricola_rate_per_minute: int
    expires_at: dt.datetime | None

    def sees(self, institution: str) -> bool:
        return institution in self.institutions


def unauthorized(message: str, *, invalid_token: bool) -> ApiError:
    challenge = 'Bearer realm="esc-sync"' + (', error="invalid_token"' if invalid_token else "")
    return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": challenge})


class Authenticator:
    def __init__(
        self,
        engine: Engine,
        *,
        policy: ApiPolicy | None = None,
        cache_seconds: float = 5.0,
        touch_interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        policy = policy or ApiPolicy()
        self.engine = engine
        self.cache_seconds = cache_seconds
        self.touch_interval = touch_interval
        self.limiter = RateLimiter(clock)
        self.failures = FailedAuthThrottle(policy.failed_auth_per_minute, clock)
        self.not_found = NotFoundWatch(policy.not_found_share, policy.not_found_min, clock)
        self._clock = clock
        self._cache: dict[str, tuple[Principal, float]] = {}  # token hash -> (principal, valid until)
        self._touched: dict[int, float] = {}
        self._dead_logged: dict[int, float] = {}  # revoked/expired token id -> when last logged

    async def authenticate(self, token: str | None, client: str = "unknown") -> Principal:
        """The principal of ``token``; a 401 otherwise, counted against ``client``'s address."""
        try:
            return await self._authenticate(token, client)
        except ApiError:
            self.failures.failed(client)
            raise

    async def _authenticate(self, token: str | None, client: str) -> Principal:
        if not token:
            raise unauthorized("a bearer token is required (Authorization: Bearer)", invalid_token=False)
        if not looks_like_token(token):
            raise unauthorized("the bearer token is malformed", invalid_token=True)
        digest = hash_token(token)
        now = self._clock()
        hit = self._cache.get(digest)
        principal: Principal | None
        if hit is not None and hit[1] > now:
            principal = hit[0]
        else:
            found = await run_in_threadpool(self._lookup, digest)
            if found is None:
                self._cache.pop(digest, None)
                raise unauthorized("the bearer token is unknown, revoked or expired", invalid_token=True)
            principal, revoked = found
            if revoked:
                self._cache.pop(digest, None)
                self._dead_token_used(principal, "revoked", client)
            if len(self._cache) >= _MAX_CACHED:
                self._cache.clear()
            self._cache[digest] = (principal, now + self.cache_seconds)
        if principal.expires_at is not None and utcnow() >= principal.expires_at:
            self._dead_token_used(principal, "expired", client)
        if now - self._touched.get(principal.token_id, -1e18) >= self.touch_interval:
            self._touched[principal.token_id] = now
            await run_in_threadpool(self._touch, principal.token_id)
        return principal

    def _dead_token_used(self, principal: Principal, why: str, client: str) -> None:
        """A revoked or expired token still in use: a leaked one, or a client nobody told. One line a
        minute per token: its id and prefix, never the token."""
        now = self._clock()
        if now - self._dead_logged.get(principal.token_id, -1e18) >= WINDOW_S:
            self._dead_logged[principal.token_id] = now
            who = (principal.token_id, principal.prefix)
            log.warning("api: %s token %d (%s…) used from %s", why, *who, client)
        raise unauthorized("the bearer token is unknown, revoked or expired", invalid_token=True)

    def _lookup(self, digest: str) -> tuple[Principal, bool] | None:
        """The token's principal and whether it is revoked; None for a token never issued."""
        t = _tokens.c
        stmt = select(
            t.id, t.prefix, t.scopes, t.institutions, t.rate_per_minute, t.matricola_rate_per_minute,
            t.expires_at, t.revoked_at,
        ).where(t.token_hash == digest)  # fmt: skip
        with self.engine.connect() as conn:
            row = conn.execute(stmt).first()
        if row is None:
            return None
        principal = Principal(
            row.id, row.prefix, frozenset(row.scopes.split()), frozenset(row.institutions.split()),
            row.rate_per_minute, row.matricola_rate_per_minute, row.expires_at,
        )  # fmt: skip
        return principal, row.revoked_at is not None

    def _touch(self, token_id: int) -> None:
        try:
            with self.engine.begin() as conn:
                conn.execute(update(ApiToken).where(ApiToken.id == token_id).values(last_used_at=utcnow()))
        except SQLAlchemyError as exc:  # bookkeeping only: never fail the request for it
            log.warning("could not record last use of API token %d: %s", token_id, type(exc).__name__)


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header; None without the header."""
    if header is None:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise unauthorized("the Authorization header must be 'Bearer <token>'", invalid_token=True)
    return value.strip()


def rate_limited(wait: float, message: str) -> ApiError:
    return ApiError(429, "rate_limited", message, headers={"Retry-After": retry_after_header(wait)})


def require(*any_of: str, by_matricola: bool = False) -> Callable[[Request], Awaitable[Principal]]:
    """A dependency admitting tokens holding at least one of the scopes ``any_of``; ``by_matricola``:
    the route looks a student up by matricola, under the token's lower allowance for that.

    The header is parsed here rather than with FastAPI's HTTPBearer dependency: a sub-dependency costs
    a noticeable share of a badge request. The bearer scheme is declared in OpenAPI by ``create_app``.
    """
    needed = frozenset(any_of)
    wanted = " or ".join(any_of)
    bucket = "+".join(any_of)  # one allowance per kind of use: a vendor's downloads, an app's badges
    challenge = f'Bearer realm="esc-sync", error="insufficient_scope", scope="{" ".join(any_of)}"'

    async def dependency(request: Request) -> Principal:
        auth: Authenticator = request.app.state.ctx.auth
        client = request.client.host if request.client else "unknown"
        if (wait := auth.failures.wait(client)) > 0:
            raise rate_limited(wait, "too many failed authentications from this address")
        principal = await auth.authenticate(bearer_token(request.headers.get("authorization")), client)
        request.state.principal = principal  # every read of a known token is audited (etl.api.audit)
        if (wait := auth.limiter.acquire((principal.token_id, bucket), principal.rate_per_minute)) > 0:
            raise rate_limited(wait, f"rate limit of {principal.rate_per_minute} requests a minute exceeded")
        if by_matricola:
            lookups = principal.matricola_rate_per_minute
            if lookups == 0:
                message = "this token looks cards up by ESCN only"
                raise ApiError(403, "matricola_lookup_disabled", message, param="matricola")
            if (wait := auth.limiter.acquire((principal.token_id, "matricola"), lookups)) > 0:
                raise rate_limited(wait, f"rate limit of {lookups} lookups by matricola a minute exceeded")
        if (wait := auth.not_found.wait(principal.token_id)) > 0:
            raise rate_limited(wait, "too many lookups found nothing: slowed down")
        if not needed & principal.scopes:
            raise ApiError(
                403,
                "insufficient_scope",
                f"this token lacks the scope {wanted}",
                headers={"WWW-Authenticate": challenge},
            )
        return principal

    return dependency
