"""What every route needs, built once by ``create_app`` and kept on ``app.state.ctx``."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field

from fastapi import Request
from sqlalchemy import Engine

from etl.api.audit import AuditTrail
from etl.api.auth import Authenticator
from etl.api.files import FileVerifier
from etl.api.hot_reads import HotReader
from etl.config import Settings
from etl.wallet.apple import PassSigner
from etl.wallet.google import GoogleIssuer


@dataclass
class ApiContext:
    settings: Settings
    engine: Engine
    reader: HotReader
    auth: Authenticator
    verifier: FileVerifier
    university_names: dict[str, str]
    logo: bytes | None  # the configured logo file (SVG or PNG) for the HTML badge; None: placeholder
    logo_png: bytes | None  # the same when it is a PNG (the PDF can only embed PNG); None: placeholder
    feed_settle: dt.timedelta
    today: Callable[[], dt.date]
    audit: AuditTrail
    wallet_signers: dict[str, PassSigner] = field(default_factory=dict)  # university → its Pass Type ID
    pass_images: dict[str, bytes] = field(default_factory=dict)  # icon and logo of every pass
    google_issuers: dict[str, GoogleIssuer] = field(default_factory=dict)  # university → its issuer
    wallet_secret: bytes | None = None  # ESC_SYNC_WALLET_SECRET: Apple's pass web service on
    # Links in answers start with this, never with the request's Host header (a client could make
    # the service hand out links to its own host).
    public_url: str = "http://127.0.0.1:8000/"


def ctx_of(request: Request) -> ApiContext:
    return request.app.state.ctx
