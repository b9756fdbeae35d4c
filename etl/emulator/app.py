"""aiohttp application of the ESC Router emulator: API routes, auth, fault injection, admin routes.

Decisions where the Router's behaviour is undocumented (see docs/esc-router-v2.md):
- a card for a person not registered with the caller's organisation answers 400 ``ER-0003``;
- a deleted card answers 404 everywhere (read, update, status, QR) but its number stays taken:
  POSTing it again answers 409 ``ER-0002``; deleting a person deletes our cards of that person;
- reading someone else's card or a person related only to other organisations answers 403 ``SE-0000``;
- an ESI percent-encoded in the path answers 400 (the Router wants it raw);
- a PUT on a person with no relation to us answers 403 (POST adds the relation).
No access log: request paths carry ESIs (personal data).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import logging
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import segno
from aiohttp import web

from etl.domain.escn import EscnMinter
from etl.domain.esi import same_esi
from etl.emulator.contract import (
    CARD_EXISTS,
    PERSON_EXISTS,
    PERSON_UNKNOWN,
    SERVER_ERROR,
    ApiError,
    access_denied,
    esi_key,
    invalid,
    not_found,
    parse_card,
    parse_card_search,
    parse_generate,
    parse_page,
    parse_person,
    raw_query_param,
    unauthorized,
)
from etl.emulator.faults import Fault, FaultConfig, FaultPlan
from etl.emulator.store import CARD_SORTS, PERSON_SORTS, Card, Conflict, Relation, Store
from etl.emulator.views import card_view, page_view, person_view, qr_url, status_view

log = logging.getLogger(__name__)

API = "/esc-rest/api/v2"
ADMIN = "/_emulator"
_HTML_502 = (
    "<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head>"
    "<body><h1>502 Bad Gateway</h1><p>The proxy server received an invalid response.</p></body></html>"
)


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


def _utc_today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(data, separators=(",", ":")).encode(), status=status, content_type="application/json"
    )


def _error(e: ApiError) -> web.Response:
    resp = _json(e.body(), e.status)
    if e.status == 401:
        resp.headers["WWW-Authenticate"] = "Bearer"
    return resp


def _internal_error(name: str, e: Exception) -> web.Response:
    # Frames only: an exception message could carry request values (personal data).
    log.error(
        "internal error in %s: %s\n%s", name, type(e).__name__, "".join(traceback.format_tb(e.__traceback__))
    )
    return _json({"code": SERVER_ERROR, "message": "Internal Server Error"}, 500)


async def _inject(request: web.Request, state: EmulatorState, fault: Fault) -> web.StreamResponse:
    state.faults[fault.kind] += 1
    if fault.after_commit:
        state.faults["post_commit"] += 1
    cfg = state.plan.config
    kind = fault.kind
    if kind in ("drop", "timeout"):
        if kind == "timeout":
            await asyncio.sleep(cfg.timeout_s)
        if request.transport is not None:
            request.transport.close()  # the client sees the connection end without a response
        return web.Response(status=500)  # never written: the transport is closed
    if kind == "html":
        return web.Response(status=502, text=_HTML_502, content_type="text/html")
    if kind == "429":
        resp = _json({"code": "ER-0429", "message": "Too Many Requests"}, 429)
        resp.headers["Retry-After"] = str(cfg.retry_after_s)
        return resp
    messages = {"500": "Internal Server Error", "502": "Bad Gateway", "503": "Service Unavailable"}
    return _json({"code": f"ER-0{kind}", "message": messages[kind]}, int(kind))


def api(handler: Handler, *, write: bool = False) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """An authenticated API route: auth first, then latency and faults (never on a 401)."""

    async def route(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE]
        state.requests += 1
        try:
            pic = state.authenticate(request.headers.get("Authorization"))
        except ApiError as e:
            state.responses[e.status] += 1
            return _error(e)
        plan = state.plan
        fault: Fault | None = None
        if not plan.idle:
            delay = plan.latency_s()
            if delay > 0:
                await asyncio.sleep(delay)
            fault = plan.draw(write=write)
            if fault is not None and not fault.after_commit:
                return await _inject(request, state, fault)
        try:
            resp = await handler(request, state, pic)
        except ApiError as e:
            resp = _error(e)
        except Exception as e:
            resp = _internal_error(handler.__name__, e)
        if fault is not None:  # the work is done (committed), the answer is lost
            return await _inject(request, state, fault)
        state.responses[resp.status] += 1
        return resp

    return route


async def _body(request: web.Request) -> Any:
    raw = await request.read()
    if not raw:
        raise invalid("body: a JSON object is required")
    try:
        return json.loads(raw)
    except ValueError:
        raise invalid("body: not valid JSON") from None


def _path_esi(request: web.Request) -> str:
    if "%" in request.raw_path.partition("?")[0]:
        raise invalid("the ESI in the path must be raw, not percent-encoded")
    return request.match_info["esi"]


def _our_relation(state: EmulatorState, esi: str, pic: str) -> Relation:
    person_id = state.store.person_id(esi_key(esi))
    if person_id is None:
        raise not_found("person")
    rel = state.store.relation(person_id, pic)
    if rel is None:
        if state.store.organisation_count(person_id) == 0:
            raise not_found("person")
        raise access_denied()
    return rel


def _our_card(state: EmulatorState, number: str, pic: str) -> Card:
    card = state.store.card(number)
    if card is None or card.deleted:
        raise not_found("card")
    if card.pic != pic:
        raise access_denied()
    return card


# --- persons ---------------------------------------------------------------------------------------


async def post_person(request: web.Request, state: EmulatorState, pic: str) -> web.Response:
    person = parse_person(await _body(request), pic)
    try:
        rel = state.store.add_relation(esi_key(person.identifier), person, pic, _now())
    except Conflict:
        raise ApiError(409, PERSON_EXISTS, "person already exists for this organisation") from None
    return _json(person_view(rel), 201)


async def get_person(request: web.Request, state: EmulatorState, pic: str) -> web.Response:
    return _json(person_view(_our_relation(state, _path_esi(request), pic)))


async def put_person(request: web.Request, state: EmulatorState, pic: str) -> web.Response:
    esi = _path_esi(request)
    rel = _our_relation(state, esi, pic)
    person = parse_person(await _body(request), pic)
    if not same_esi(person.identifier, esi):
        raise invalid("identifier: an ESI can never change")
    updated = state.store.replace_relation(rel.person_id, person, pic, _now())
    assert updated is not None
    return _json(person_view(updated))


async def delete_person(request: web.Request, state: EmulatorState, pic: str) -> web.Response:
    rel = _our_relation(state, _path_esi(request), pic)
    state.store.delete_relation(rel.person_id, pic, _now())
    return web.Response(status=204)


async def list_persons(request: web.Request, state: EmulatorState, pic: str) -> web.Response:
    if request.query.get("search"):
        raise invalid("search: not supported on persons")
    page = parse_page(dict(request.query), tuple(PERSON_SORTS))
    total, rows = state.store.list_relations(
        pic, page.number * page.size, page.size, page.sort, page.descending
    )
    content = [person_view(r) for r in rows]
    return _json(page_view(content, total, page, str(request.url.with_query(None)), dict(request.query)))


# --- cards -----------------------------------------------------------------------------------------


async def post_card(request: web.Request, state: EmulatorState, pic: str) -> web.Response:
    card = parse_card(await _body(request), pic)
    person = state.store.relation_by_esi(esi_key(card.person_identifier), pic)
    if person is None:
        raise ApiError(400, PERSON_UNKNOWN, "personIdentifier: person not registered for this organisation")
    number = card.card_number or state.minter(pic, 1).mint()
    try:
        stored = state.store.add_card(number, card, person, _now())
    except Conflict:
        raise ApiError(409, CARD_EXISTS, "card number already exists") from None
    return _json(card_view(stored, state.today()), 201)


async def get_card(request: web.Request, state: EmulatorState, pic: str) -> web.Response:
    return _json(card_view(_our_card(state, request.match_info["escn"], pic), state.today()))


async def put_card(request: web.Request, state: EmulatorState, pic: str) -> web.Response:
    number = request.match_info["escn"]
    current = _our_card(state, number, pic)
    card = parse_card(await _body(request), pic)
    if card.card_number is not None and card.card_number != number:
        raise invalid("cardNumber: differs from the card in the path")
    if not same_esi(card.person_identifier, current.person_identifier):
        raise invalid("personIdentifier: a card cannot move to another person")
    # No special case for EXPIRED: the read status is derived from expiresAt, so only a PUT that also
    # carries a future expiresAt revives an expired card.
    return _json(card_view(state.store.replace_card(number, card, _now()), state.today()))


async def delete_card(request: web.Request, state: EmulatorState, pic: str) -> web.Response:
    card = _our_card(state, request.match_info["escn"], pic)
    state.store.delete_card(card.card_number, _now())
    return web.Response(status=204)


async def list_cards(request: web.Request, state: EmulatorState, pic: str) -> web.Response:
    esi = parse_card_search(raw_query_param(request.rel_url.raw_query_string, "search"))
    page = parse_page(dict(request.query), tuple(CARD_SORTS))
    total, rows = 0, []
    person_id = None if esi is None else state.store.person_id(esi_key(esi))
    if esi is None or person_id is not None:
        total, rows = state.store.list_cards(
            pic, person_id, page.number * page.size, page.size, page.sort, page.descending
        )
    today = state.today()
    content = [card_view(c, today) for c in rows]
    return _json(page_view(content, total, page, str(request.url.with_query(None)), dict(request.query)))


async def generate_escn(request: web.Request, state: EmulatorState, pic: str) -> web.Response:
    prefix, count = parse_generate(dict(request.query), pic)
    minter = state.minter(pic, prefix)
    return _json([minter.mint() for _ in range(count)])


async def card_qr(request: web.Request, state: EmulatorState, pic: str) -> web.Response:
    card = _our_card(state, request.match_info["escn"], pic)
    url = qr_url(card.card_number)
    if "image/svg+xml" in request.headers.get("Accept", ""):
        buf = io.BytesIO()
        segno.make(url, error="m", version=4, boost_error=False).save(buf, kind="svg", border=4)
        return web.Response(body=buf.getvalue(), content_type="image/svg+xml")
    return web.Response(text=url, content_type="text/plain")


async def card_status(request: web.Request) -> web.Response:
    """Public (no auth, no faults): what a verifier sees after scanning the QR code."""
    state = request.app[STATE]
    state.requests += 1
    card = state.store.card(request.match_info["escn"])
    if card is None or card.deleted:
        resp = _error(not_found("card"))
    else:
        resp = _json(status_view(card, state.today()))
    state.responses[resp.status] += 1
    return resp


# --- admin (no auth, no faults) --------------------------------------------------------------------


async def admin_health(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def admin_stats(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return _json(
        {
            "requests": state.requests,
            "responses": {str(k): v for k, v in sorted(state.responses.items())},
            "faults": dict(state.faults),
            "faults_total": sum(v for k, v in state.faults.items() if k != "post_commit"),
            "organisations": state.store.counts_by_pic(),
            "api_keys": len(state.api_keys),
        }
    )


async def admin_get_faults(request: web.Request) -> web.Response:
    return _json(request.app[STATE].plan.config.to_dict())


async def admin_put_faults(request: web.Request) -> web.Response:
    try:
        config = FaultConfig.from_dict(await _body(request))
    except ApiError as e:
        return _error(e)
    except (TypeError, ValueError) as e:
        return _error(invalid(str(e)))
    request.app[STATE].plan = FaultPlan(config)
    log.info("fault config replaced: %s", config.to_dict())
    return _json(config.to_dict())


async def admin_reset(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.store.reset()
    state.requests = 0
    state.responses.clear()
    state.faults.clear()
    return _json({"status": "reset"})


def create_app(
    api_keys: dict[str, str],
    store: Store,
    faults: FaultConfig | None = None,
    today: Callable[[], dt.date] = _utc_today,
) -> web.Application:
    app = web.Application()
    app[STATE] = EmulatorState(
        store=store, api_keys=dict(api_keys), plan=FaultPlan(faults or FaultConfig()), today=today
    )
    r = app.router
    r.add_post(f"{API}/persons", api(post_person, write=True))
    r.add_get(f"{API}/persons", api(list_persons))
    r.add_get(f"{API}/persons/{{esi}}", api(get_person))
    r.add_put(f"{API}/persons/{{esi}}", api(put_person, write=True))
    r.add_delete(f"{API}/persons/{{esi}}", api(delete_person, write=True))
    # The fixed path first, so "generate-escn" is never read as a card number.
    r.add_get(f"{API}/cards/generate-escn", api(generate_escn))
    r.add_post(f"{API}/cards", api(post_card, write=True))
    r.add_get(f"{API}/cards", api(list_cards))
    r.add_get(f"{API}/cards/{{escn}}", api(get_card))
    r.add_put(f"{API}/cards/{{escn}}", api(put_card, write=True))
    r.add_delete(f"{API}/cards/{{escn}}", api(delete_card, write=True))
    r.add_get(f"{API}/cards/{{escn}}/status", card_status)
    r.add_get(f"{API}/cards/{{escn}}/qr", api(card_qr))
    r.add_get(f"{ADMIN}/health", admin_health)
    r.add_get(f"{ADMIN}/stats", admin_stats)
    r.add_get(f"{ADMIN}/faults", admin_get_faults)
    r.add_put(f"{ADMIN}/faults", admin_put_faults)
    r.add_post(f"{ADMIN}/reset", admin_reset)
    return app
