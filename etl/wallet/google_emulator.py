"""A loopback emulator of the few Google endpoints esc-sync uses, written from Google's published
references (as etl.emulator is written from the Router's document), for tests and for trying Google
Wallet without an issuer account:

* ``POST /token``: OAuth 2.0 JWT bearer grant ("Using OAuth 2.0 for server to server applications"):
  the assertion must be signed RS256 by a known service account, ``aud`` this endpoint, ``scope``
  the Wallet issuer scope, at most an hour long;
* ``walletobjects/v1/genericClass`` get and insert, ``walletobjects/v1/genericObject`` get, insert
  and patch (Google Wallet API reference): a bearer token is required, ids are
  ``<issuer id>.<identifier>`` of the token's issuer, an existing id is a 409 on insert, a missing
  one a 404, errors are ``{"error": {"code", "message", "status"}}``;
* ``GET /gp/v/save/<JWT>``: what happens when a student presses "Save to Google Wallet": the JWT
  (``aud`` google, ``typ`` savetowallet) is checked and its objects are inserted under existing classes.

State is in memory. ``GoogleWalletEmulator`` runs it on a thread of its own, on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from etl.wallet.google import SCOPE
from etl.wallet.google_api import GRANT

_ID = re.compile(r"^([0-9]+)\.[A-Za-z0-9._-]+$")
STATES = frozenset(("STATE_UNSPECIFIED", "ACTIVE", "COMPLETED", "EXPIRED", "INACTIVE"))


@dataclass(frozen=True)
class Account:
    """A service account the emulator knows: its issuer and the public half of its key."""

    issuer_id: str
    public_key: rsa.RSAPublicKey


@dataclass
class EmulatorState:
    accounts: Mapping[str, Account]  # client_email → account
    token_url: str = ""
    tokens: dict[str, tuple[str, float]] = field(default_factory=dict)  # token → (email, expiry)
    classes: dict[str, dict[str, Any]] = field(default_factory=dict)
    objects: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)  # (method, route name)
    fail_with: int | None = None  # set: every API call answers this status (an outage)


class _Refused(Exception):
    def __init__(self, code: int, status: str, message: str) -> None:
        super().__init__(message)
        self.code, self.status, self.message = code, status, message


def _unb64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _verify_jwt(jwt: str, accounts: Mapping[str, Account]) -> tuple[Account, dict[str, Any]]:
    try:
        head, body, signature = jwt.split(".")
        header, claims = json.loads(_unb64(head)), json.loads(_unb64(body))
        account = accounts[claims["iss"]]
    except (ValueError, KeyError, TypeError):
        raise _Refused(400, "invalid_grant", "malformed JWT or unknown issuer") from None
    if header.get("alg") != "RS256":
        raise _Refused(400, "invalid_grant", "alg must be RS256")
    try:
        account.public_key.verify(
            _unb64(signature), f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256()
        )
    except (InvalidSignature, ValueError):
        raise _Refused(400, "invalid_grant", "invalid JWT signature") from None
    return account, claims


def _owned(resource_id: str, issuer_id: str) -> None:
    match = _ID.match(resource_id)
    if match is None:
        raise _Refused(400, "INVALID_ARGUMENT", "id must be <issuer id>.<identifier>")
    if match.group(1) != issuer_id:
        raise _Refused(403, "PERMISSION_DENIED", "the id belongs to another issuer")


def create_app(state: EmulatorState) -> web.Application:
    app = web.Application()

    def answer(body: Any, status: int = 200) -> web.Response:
        return web.json_response(body, status=status)

    @web.middleware
    async def errors(request: web.Request, handler: Any) -> web.StreamResponse:
        route = request.match_info.route.resource
        state.calls.append((request.method, route.canonical if route else request.path))
        if state.fail_with is not None and request.path.startswith("/walletobjects/"):
            return answer({"error": {"code": state.fail_with, "message": "outage", "status": "UNAVAILABLE"}},
                          state.fail_with)  # fmt: skip
        try:
            return await handler(request)
        except _Refused as e:
            if request.path == "/token":
                return answer({"error": e.status, "error_description": e.message}, e.code)
            return answer({"error": {"code": e.code, "message": e.message, "status": e.status}}, e.code)

    app.middlewares.append(errors)

    def issuer_of(request: web.Request) -> str:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        email, expiry = state.tokens.get(token, ("", 0.0)) if scheme == "Bearer" else ("", 0.0)
        if expiry < time.time():
            raise _Refused(401, "UNAUTHENTICATED", "a valid access token is required")
        return state.accounts[email].issuer_id

    async def json_body(request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError:
            raise _Refused(400, "INVALID_ARGUMENT", "the body is not JSON") from None
        if not isinstance(body, dict):
            raise _Refused(400, "INVALID_ARGUMENT", "the body must be an object")
        if "state" in body and body["state"] not in STATES:
            raise _Refused(400, "INVALID_ARGUMENT", "unknown state")
        return body

    async def token(request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("grant_type") != GRANT:
            raise _Refused(400, "unsupported_grant_type", "grant_type must be the JWT bearer grant")
        _, claims = _verify_jwt(str(form.get("assertion", "")), state.accounts)
        now = time.time()
        if claims.get("aud") != state.token_url or SCOPE not in str(claims.get("scope", "")).split():
            raise _Refused(400, "invalid_scope", "aud must be this endpoint, scope the Wallet issuer's")
        if not (claims.get("iat", 0) - 300 <= now < claims.get("exp", 0) <= claims.get("iat", 0) + 3600):
            raise _Refused(400, "invalid_grant", "the assertion is expired or longer than an hour")
        value = secrets.token_urlsafe(24)
        state.tokens[value] = (str(claims["iss"]), now + 3600)
        return answer({"access_token": value, "expires_in": 3600, "token_type": "Bearer"})

    def collection(kind: str) -> dict[str, dict[str, Any]]:
        return state.classes if kind == "genericClass" else state.objects

    async def get(request: web.Request) -> web.Response:
        kind, rid = request.match_info["kind"], request.match_info["id"]
        _owned(rid, issuer_of(request))
        if rid not in collection(kind):
            raise _Refused(404, "NOT_FOUND", f"{kind} not found")
        return answer(collection(kind)[rid])

    async def insert(request: web.Request) -> web.Response:
        kind = request.match_info["kind"]
        issuer = issuer_of(request)
        body = await json_body(request)
        rid = str(body.get("id", ""))
        _owned(rid, issuer)
        if rid in collection(kind):
            raise _Refused(409, "ALREADY_EXISTS", f"{kind} already exists")
        if kind == "genericObject" and body.get("classId") not in state.classes:
            raise _Refused(400, "INVALID_ARGUMENT", "classId: no such class")
        collection(kind)[rid] = body
        return answer(body)

    async def patch(request: web.Request) -> web.Response:
        rid = request.match_info["id"]
        _owned(rid, issuer_of(request))
        body = await json_body(request)
        if rid not in state.objects:
            raise _Refused(404, "NOT_FOUND", "genericObject not found")
        if (
            body.get("id", rid) != rid
            or body.get("classId", state.objects[rid]["classId"]) not in state.classes
        ):
            raise _Refused(400, "INVALID_ARGUMENT", "id and classId cannot change to unknown values")
        state.objects[rid] = {**state.objects[rid], **body}  # patch semantics: given fields replaced
        return answer(state.objects[rid])

    async def save(request: web.Request) -> web.Response:
        account, claims = _verify_jwt(request.match_info["jwt"], state.accounts)
        if claims.get("aud") != "google" or claims.get("typ") != "savetowallet":
            raise _Refused(400, "INVALID_ARGUMENT", "not a Save to Google Wallet JWT")
        objects = claims.get("payload", {}).get("genericObjects", [])
        for obj in objects:
            _owned(str(obj.get("id", "")), account.issuer_id)
            if obj.get("classId") not in state.classes:
                raise _Refused(400, "INVALID_ARGUMENT", "classId: no such class")
        for obj in objects:
            state.objects.setdefault(obj["id"], obj)  # a pass saved twice stays the saved one
        return web.Response(text=f"saved {len(objects)} pass(es)")

    base = "/walletobjects/v1/{kind:genericClass|genericObject}"
    app.router.add_post("/token", token)
    app.router.add_get(base + "/{id}", get)
    app.router.add_post(base, insert)
    app.router.add_patch("/walletobjects/v1/genericObject/{id}", patch)
    app.router.add_get("/gp/v/save/{jwt}", save)
    return app


class GoogleWalletEmulator:
    """The emulator on 127.0.0.1 in a thread: ``url`` is its root, ``api_url`` the Wallet API's,
    ``token_url`` the OAuth endpoint to write into a service account's key file."""

    def __init__(self, accounts: Mapping[str, Account]) -> None:
        self.state = EmulatorState(accounts)
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.url = ""

    @property
    def api_url(self) -> str:
        return self.url + "walletobjects/v1/"

    @property
    def token_url(self) -> str:
        return self.url + "token"

    def start(self) -> GoogleWalletEmulator:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    async def _start(self) -> None:
        self._runner = web.AppRunner(create_app(self.state), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/"
        self.state.token_url = self.token_url

    def stop(self) -> None:
        """Stops it (again: nothing)."""
        if self._runner is None:
            return
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
        self._runner = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
