"""What every emulator route shares: the state kept on the aiohttp application, JSON and error
answers in the Router's shapes, and lookups of the caller's own persons and cards."""

from __future__ import annotations

import datetime as dt
import json
import logging
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from etl.domain.escn import EscnMinter
from etl.emulator.contract import (
    SERVER_ERROR,
    ApiError,
    access_denied,
    esi_key,
    invalid,
    not_found,
    unauthorized,
)
from etl.emulator.faults import FaultPlan
from etl.emulator.store import Card, Relation, Store

log = logging.getLogger(__name__)


@dataclass
class EmulatorState:
    store: Store
    api_keys: dict[str, str]  # key -> PIC
    plan: FaultPlan
    today: Callable[[], dt.date]
    requests: int = 0
    responses: Counter[int] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    minters: dict[tuple[str, int], EscnMinter] = field(default_factory=dict)

    def authenticate(self, header: str | None) -> str:
        scheme, _, key = (header or "").partition(" ")
        pic = self.api_keys.get(key.strip()) if scheme.lower() == "bearer" else None
        if pic is None:
            raise unauthorized()
        return pic

    def minter(self, pic: str, prefix: int) -> EscnMinter:
        m = self.minters.get((pic, prefix))
        if m is None:
            m = self.minters[(pic, prefix)] = EscnMinter(pic, prefix)
        return m


STATE = web.AppKey("state", EmulatorState)
Handler = Callable[[web.Request, EmulatorState, str], Awaitable[web.StreamResponse]]


def utc_today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(data, separators=(",", ":")).encode(), status=status, content_type="application/json"
    )


def error_response(e: ApiError, content_type: str = "application/json") -> web.Response:
    # Spring renders an error in the media type the operation produces (the picture download's
    # errors are ApiErrorMessage JSON sent as application/octet-stream, as its document says).
    resp = json_response(e.body(), e.status)
    resp.content_type = content_type
    if e.status == 401:
        resp.headers["WWW-Authenticate"] = "Bearer"
    return resp


def internal_error(name: str, e: Exception) -> web.Response:
    # Frames only: an exception message could carry request values (personal data).
    log.error(
        "internal error in %s: %s\n%s", name, type(e).__name__, "".join(traceback.format_tb(e.__traceback__))
    )
    return json_response({"code": SERVER_ERROR, "message": "Internal Server Error"}, 500)


async def read_body(request: web.Request) -> Any:
    raw = await request.read()
    if not raw:
        raise invalid("body: a JSON object is required")
    try:
        return json.loads(raw)
    except ValueError:
        raise invalid("body: not valid JSON") from None


def path_esi(request: web.Request) -> str:
    return request.match_info["esi"]  # decoded: a client may send the ESI raw or percent-encoded


def our_relation(state: EmulatorState, esi: str, pic: str) -> Relation:
    person_id = state.store.person_id(esi_key(esi))
    if person_id is None:
        raise not_found("person")
    rel = state.store.relation(person_id, pic)
    if rel is None:
        if state.store.organisation_count(person_id) == 0:
            raise not_found("person")
        raise access_denied()
    return rel


def our_card(state: EmulatorState, number: str, pic: str) -> Card:
    card = state.store.card(number)
    if card is None or card.deleted:
        raise not_found("card")
    if card.pic != pic:
        raise access_denied()
    return card
