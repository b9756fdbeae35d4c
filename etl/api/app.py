"""The FastAPI application: ``create_app(settings, engine=None)``. OpenAPI at /openapi.json, docs at /docs."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy import Engine
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from etl.api import routes_apple_wallet, routes_badges, routes_exports, routes_feed, routes_health
from etl.api.audit import AuditMiddleware, AuditTrail
from etl.api.auth import BEARER_SCHEME, Authenticator
from etl.api.context import ApiContext
from etl.api.errors import install_error_handlers
from etl.api.files import FileVerifier
from etl.api.hot_reads import HotReader
from etl.config import Settings
from etl.errors import EscSyncError
from etl.render.logo import load_logo
from etl.store.db import make_engine
from etl.wallet.apple import pass_images
from etl.wallet.policy import WALLET_SECRET_ENV

PUBLIC_PATHS = frozenset({"/v1/health"})
# Swagger UI's own files, shipped by a package: the docs page loads nothing from a CDN.
SWAGGER_FILES = Path(fastapi_offline.__file__).parent / "static"
DESCRIPTION = """\
European Student Card data of the universities served by this esc-sync deployment.

* **Vendors** (`exports:read`): list and download the bulk exports (Parquet + ZIP of QR images,
  `ETag` = SHA-256, `Range` supported), or follow the incremental QR feed.
* **Web student areas and apps** (`badges:read`): a student's virtual badge as JSON, HTML or PDF,
  and the card's QR code as PNG or SVG.

Every call but `/v1/health` needs `Authorization: Bearer <token>` (tokens: `esc-sync tokens create`).
Errors are JSON: `{"error": {"code": ..., "message": ..., "param": ...}}`.
"""


def create_app(
    settings: Settings,
    engine: Engine | None = None,
    *,
    token_cache_seconds: float = 5.0,
    feed_settle_seconds: float = 60.0,
    today: Callable[[], dt.date] = dt.date.today,
    public_url: str | None = None,
) -> FastAPI:
    """The API over ``settings``' state DB (or ``engine``; an engine made here is disposed at shutdown).

    ``token_cache_seconds``: how long a token lookup is trusted (a revocation takes effect within it).
    ``feed_settle_seconds``: cards changed more recently are held back from the feed (see routes_feed).
    ``public_url``: where clients reach this service (links in answers); default ``[api] public_url``.
    """
    own_engine = engine is None
    engine = engine if engine is not None else make_engine(settings.database_url)
    try:
        logo = load_logo(settings.logo_path)
    except ValueError as exc:
        raise EscSyncError(f"qr: field logo_path: {exc}") from None
    ctx = ApiContext(
        settings=settings,
        engine=engine,
        reader=HotReader(engine),
        auth=Authenticator(engine, policy=settings.api, cache_seconds=token_cache_seconds),
        verifier=FileVerifier(),
        university_names={a.code: a.name for a in settings.atenei},
        logo=logo.data if logo.kind != "placeholder" else None,
        logo_png=logo.data if logo.kind == "png" else None,
        feed_settle=dt.timedelta(seconds=feed_settle_seconds),
        today=today,
        audit=AuditTrail(engine),
    )
    # Apple Wallet: each configured university's signer, loaded once (a bad file stops here, one line).
    ctx.wallet_signers = {a.code: a.apple_wallet.signer() for a in settings.atenei if a.apple_wallet}
    ctx.google_issuers = {a.code: a.google_wallet.issuer() for a in settings.atenei if a.google_wallet}
    if ctx.wallet_signers:
        ctx.pass_images = pass_images(ctx.logo_png)
        secret = os.environ.get(WALLET_SECRET_ENV)
        ctx.wallet_secret = secret.encode() if secret else None
    if public_url or settings.api_public_url:
        ctx.public_url = _with_slash(public_url or settings.api_public_url or "")

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        ctx.audit.close()
        ctx.reader.close()
        if own_engine:
            engine.dispose()

    app = FastAPI(
        title="esc-sync API",
        version=routes_health.VERSION,
        description=DESCRIPTION,
        docs_url=None,  # served below from local files
        redoc_url=None,
        openapi_url="/openapi.json",
        lifespan=lifespan,
        # FastAPI's built-in OpenTelemetry would put request paths (matricole) into spans, and costs
        # ~20 µs a request even with no exporter configured.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.ctx = ctx
    app.add_middleware(
        AuditMiddleware,
        trail=ctx.audit,
        university_of_pic={a.pic: a.code for a in settings.atenei},
        lookup_routes=routes_badges.LOOKUP_ROUTES,
        record_lookup=lambda p, found: ctx.auth.not_found.record(p.token_id, p.prefix, found),
    )
    # The client address (audit rows, failed-authentication throttle) is the connection's, or what
    # X-Forwarded-For says when the connection comes from a configured proxy: never from anyone else.
    # Added last, so it runs first.
    if settings.api.trusted_proxies:
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=list(settings.api.trusted_proxies))
    install_error_handlers(app)
    app.mount("/docs/static", StaticFiles(directory=SWAGGER_FILES), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="esc-sync API",
            swagger_js_url="/docs/static/swagger-ui-bundle.js",
            swagger_css_url="/docs/static/swagger-ui.css",
            swagger_favicon_url="/docs/static/favicon.png",
        )

    # Routes are matched in order: the hot badge and QR routes first.
    for module in (routes_badges, routes_health, routes_exports, routes_feed, routes_apple_wallet):
        app.include_router(module.router)
    app.openapi = lambda: _openapi_with_bearer(app)  # type: ignore[method-assign]
    return app


def _with_slash(url: str) -> str:
    return url if url.endswith("/") else url + "/"


def _openapi_with_bearer(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document plus the bearer scheme, required by every operation but health."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    schema = FastAPI.openapi(app)  # also cached on the app: the changes below are made once
    schema.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = BEARER_SCHEME
    for path, item in schema["paths"].items():
        if path not in PUBLIC_PATHS:
            for operation in item.values():
                operation["security"] = [{"bearer": []}]
    return schema
