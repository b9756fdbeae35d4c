"""Bearer authentication, scopes and the per-token rate limit, as FastAPI dependencies.

Order of checks: a valid token (else 401), its rate limit (else 429), then the scope (else 403). The
university check belongs to each route: a filter naming another university is a 403, a resource of
another university a 404 identical to a missing one.

Token lookups are cached for a few seconds (a revocation takes effect within ``cache_seconds``) and
``last_used_at`` is written at most once a ``touch_interval`` per token, so the hot path does no
database work for authentication.
"""

from __future__ import annotations

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
from etl.api.tokens import hash_token, looks_like_token
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
    scopes: frozenset[str]
    institutions: frozenset[str]
    rate_per_minute: int

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
        cache_seconds: float = 5.0,
        touch_interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.cache_seconds = cache_seconds
        self.touch_interval = touch_interval
        self.limiter = RateLimiter(clock)
        self._clock = clock
        self._cache: dict[str, tuple[Principal, float]] = {}  # token hash -> (principal, valid until)
        self._touched: dict[int, float] = {}

    async def authenticate(self, token: str | None) -> Principal:
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
            principal = await run_in_threadpool(self._lookup, digest)
            if principal is None:
                self._cache.pop(digest, None)
                raise unauthorized("the bearer token is unknown or revoked", invalid_token=True)
            if len(self._cache) >= _MAX_CACHED:
                self._cache.clear()
            self._cache[digest] = (principal, now + self.cache_seconds)
        if now - self._touched.get(principal.token_id, -1e18) >= self.touch_interval:
            self._touched[principal.token_id] = now
            await run_in_threadpool(self._touch, principal.token_id)
        return principal

    def _lookup(self, digest: str) -> Principal | None:
        t = _tokens.c
        stmt = select(t.id, t.scopes, t.institutions, t.rate_per_minute).where(
            t.token_hash == digest, t.revoked_at.is_(None)
        )
        with self.engine.connect() as conn:
            row = conn.execute(stmt).first()
        if row is None:
            return None
        return Principal(
            row.id, frozenset(row.scopes.split()), frozenset(row.institutions.split()), row.rate_per_minute
        )

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


def require(*any_of: str) -> Callable[[Request], Awaitable[Principal]]:
    """A dependency admitting tokens holding at least one of the scopes ``any_of``.

    The header is parsed here rather than with FastAPI's HTTPBearer dependency: a sub-dependency costs
    a noticeable share of a badge request. The bearer scheme is declared in OpenAPI by ``create_app``.
    """
    needed = frozenset(any_of)
    wanted = " or ".join(any_of)
    challenge = f'Bearer realm="esc-sync", error="insufficient_scope", scope="{" ".join(any_of)}"'

    async def dependency(request: Request) -> Principal:
        auth: Authenticator = request.app.state.ctx.auth
        principal = await auth.authenticate(bearer_token(request.headers.get("authorization")))
        request.state.principal = principal  # every read of a known token is audited (etl.api.audit)
        wait = auth.limiter.acquire(principal.token_id, principal.rate_per_minute)
        if wait > 0:
            raise ApiError(
                429,
                "rate_limited",
                f"rate limit of {principal.rate_per_minute} requests a minute exceeded",
                headers={"Retry-After": retry_after_header(wait)},
            )
        if not needed & principal.scopes:
            raise ApiError(
                403,
                "insufficient_scope",
                f"this token lacks the scope {wanted}",
                headers={"WWW-Authenticate": challenge},
            )
        return principal

    return dependency
