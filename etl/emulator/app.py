"""aiohttp application of the ESC Router emulator: API routes, auth, fault injection, admin routes.

Every operation of the Router's OpenAPI document (``esc-router-v2.openapi.json`` beside this module,
served at ``/esc-rest/v3/api-docs/V2``) is served with the document's shapes (``views.py``).
Decisions where the Router's behaviour is undocumented (see docs/esc-router-v2.md):
- a card for a person not registered with the caller's organisation answers 400
  ``EMU-PERSON-UNKNOWN`` (the emulator's own codes start with ``EMU-``);
- a deleted card answers 404 (read, update, status; 400 on the QR, which lists no 404) but its
  number stays taken:
  POSTing it again answers 409 ``ER-0002``; deleting a person deletes our cards of that person;
- reading someone else's card or a person related only to other organisations answers 403 ``SE-0000``;
- a PUT on a person with no relation to us answers 403 (POST adds the relation);
- a PUT that carries ``cardNumber`` answers 400 (the document: POST only); a PUT on an EXPIRED card
  without a future ``expiresAt`` answers 400 (an expired card is revived only with a new expiry);
- ``csv-config`` maps the CSV columns ``validate-csv`` reads to their 0-based positions;
- a picture must be a 200×300 image unless ``resize=true`` (then it is resized); others answer 400.
No access log: request paths carry ESIs (personal data).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import segno
from aiohttp import web

from etl.domain.esi import same_esi
from etl.emulator.contract import (
    CARD_EXISTS,
    PERSON_EXISTS,
    PERSON_UNKNOWN,
    ApiError,
    address_not_allowed,
    esi_key,
    invalid,
    not_found,
    parse_card,
    parse_card_search,
    parse_generate,
    parse_page,
    parse_person,
    raw_query_param,
)
from etl.emulator.extras import (
    csv_config,
    delete_picture,
    get_picture,
    upload_picture,
    validate_csv,
)
from etl.emulator.faults import Fault, FaultConfig, FaultPlan
from etl.emulator.state import (
    STATE,
    EmulatorState,
    Handler,
    error_response,
    internal_error,
    json_response,
    now,
    our_card,
    our_relation,
    path_esi,
    read_body,
    utc_today,
)
from etl.emulator.store import CARD_SORTS, PERSON_SORTS, Conflict, Store
from etl.emulator.views import (
    card_lite_view,
    card_view,
    page_view,
    person_lite_view,
    person_view,
    qr_url,
    status_view,
)

log = logging.getLogger(__name__)

API = "/esc-rest/api/v2"
API_DOCS = "/esc-rest/v3/api-docs/V2"  # where the Router publishes its document
ADMIN = "/_emulator"
OPENAPI_DOCUMENT = Path(__file__).with_name("esc-router-v2.openapi.json")
_HTML_502 = (
    "<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head>"
    "<body><h1>502 Bad Gateway</h1><p>The proxy server received an invalid response.</p></body></html>"
)


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
        resp = json_response({"code": "EMU-429", "message": "Too Many Requests"}, 429)
        resp.headers["Retry-After"] = str(cfg.retry_after_s)
        return resp
    messages = {"500": "Internal Server Error", "502": "Bad Gateway", "503": "Service Unavailable"}
    return json_response({"code": f"EMU-{kind}", "message": messages[kind]}, int(kind))


def api(
    handler: Handler, *, write: bool = False, error_type: str = "application/json"
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """An authenticated API route: auth first, then latency and faults (never on a 401)."""

    async def route(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE]
        state.requests += 1
        try:
            pic = state.authenticate(request.headers.get("Authorization"))
        except ApiError as e:
            state.responses[e.status] += 1
            return error_response(e, error_type)
        plan = state.plan
        if plan.denies(pic):  # the gateway refuses before anything runs
            state.responses[403] += 1
            return error_response(address_not_allowed(), error_type)
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
            resp = error_response(e, error_type)
        except ConnectionResetError:  # the client went away mid-request (killed): nobody to answer
            state.responses[499] += 1
            return web.Response(status=499)  # never sent; aiohttp drops it quietly
        except Exception as e:
            resp = internal_error(handler.__name__, e)
        if fault is not None:  # the work is done (committed), the answer is lost
            return await _inject(request, state, fault)
        state.responses[resp.status] += 1
        return resp

    return route


# --- persons ---------------------------------------------------------------------------------------


async def post_person(request: web.Request, state: EmulatorState, pic: str) -> web.Response:
    person = parse_person(await read_body(request), pic)
    try:
        rel = state.store.add_relation(esi_key(person.identifier), person, pic, now())
    except Conflict:
        raise ApiError(409, PERSON_EXISTS, "person already exists for this organisation") from None
    return json_response(person_view(rel), 201)


async def get_person(request: web.Request, state: EmulatorState, pic: str) -> web.Response:
    return json_response(person_view(our_relation(state, path_esi(request), pic)))


async def put_person(request: web.Request, state: EmulatorState, pic: str) -> web.Response:
    esi = path_esi(request)
    rel = our_relation(state, esi, pic)
    person = parse_person(await read_body(request), pic)
    if not same_esi(person.identifier, esi):
        raise invalid("identifier: an ESI can never change")
    updated = state.store.replace_relation(rel.person_id, person, pic, now())
    assert updated is not None
    return json_response(person_view(updated))


async def delete_person(request: web.Request, state: EmulatorState, pic: str) -> web.Response:
    rel = our_relation(state, path_esi(request), pic)
    state.store.delete_relation(rel.person_id, pic, now())
    return web.Response(status=204)


async def list_persons(request: web.Request, state: EmulatorState, pic: str) -> web.Response:
    if request.query.get("search"):
        raise invalid("search: not supported on persons")
    page = parse_page(dict(request.query), tuple(PERSON_SORTS))
    total, rows = state.store.list_relations(
        pic, page.number * page.size, page.size, page.sort, page.descending
    )
    content = [person_lite_view(r) for r in rows]
    return json_response(
        page_view(content, total, page, str(request.url.with_query(None)), dict(request.query))
    )


# --- cards -----------------------------------------------------------------------------------------


async def post_card(request: web.Request, state: EmulatorState, pic: str) -> web.Response:
    card = parse_card(await read_body(request), pic)
    person = state.store.relation_by_esi(esi_key(card.person_identifier), pic)
    if person is None:
        raise ApiError(400, PERSON_UNKNOWN, "personIdentifier: person not registered for this organisation")
    number = card.card_number or state.minter(pic, 1).mint()
    try:
        stored = state.store.add_card(number, card, person, now())
    except Conflict:
        raise ApiError(409, CARD_EXISTS, "card number already exists") from None
    return json_response(card_view(stored, state.today()), 201)


async def get_card(request: web.Request, state: EmulatorState, pic: str) -> web.Response:
    return json_response(card_view(our_card(state, request.match_info["escn"], pic), state.today()))


async def put_card(request: web.Request, state: EmulatorState, pic: str) -> web.Response:
    number = request.match_info["escn"]
    current = our_card(state, number, pic)
    card = parse_card(await read_body(request), pic, create=False)
    if not same_esi(card.person_identifier, current.person_identifier):
        raise invalid("personIdentifier: a card cannot move to another person")
    today = state.today()
    if current.expires_at < today and card.expires_at < today:
        raise invalid("expiresAt: an EXPIRED card is revived only together with a future expiresAt")
    return json_response(card_view(state.store.replace_card(number, card, now()), today))


async def delete_card(request: web.Request, state: EmulatorState, pic: str) -> web.Response:
    card = our_card(state, request.match_info["escn"], pic)
    state.store.delete_card(card.card_number, now())
    return web.Response(status=204)


async def list_cards(request: web.Request, state: EmulatorState, pic: str) -> web.Response:
    esi = parse_card_search(raw_query_param(request.rel_url.raw_query_string, "search"))
    page = parse_page(dict(request.query), tuple(CARD_SORTS))
    total, rows = 0, list[Any]()
    person_id = None if esi is None else state.store.person_id(esi_key(esi))
    if esi is None or person_id is not None:
        total, rows = state.store.list_cards(
            pic, person_id, page.number * page.size, page.size, page.sort, page.descending
        )
    content = [card_lite_view(c) for c in rows]
    return json_response(
        page_view(content, total, page, str(request.url.with_query(None)), dict(request.query))
    )


async def generate_escn(request: web.Request, state: EmulatorState, pic: str) -> web.Response:
    prefix, count = parse_generate(dict(request.query), pic)
    minter = state.minter(pic, prefix)
    return json_response([minter.mint() for _ in range(count)])


async def card_qr(request: web.Request) -> web.Response:
    """Public like the status (the document lists no Authorization for it): the artwork of what is
    printed on the card. The document lists no 404 here: an unknown card answers 400."""
    state = request.app[STATE]
    state.requests += 1
    card = state.store.card(request.match_info["escn"])
    svg = "image/svg+xml" in request.headers.get("Accept", "")
    if card is None or card.deleted:
        state.responses[400] += 1
        return error_response(invalid("escn: no such card"), "image/svg+xml" if svg else "text/plain")
    state.responses[200] += 1
    url = qr_url(card.card_number)
    if svg:
        buf = io.BytesIO()
        segno.make(url, error="m", version=4, boost_error=False).save(buf, kind="svg", border=4)
        return web.Response(body=buf.getvalue(), content_type="image/svg+xml")
    return web.Response(text=url, content_type="text/plain")


async def api_docs(request: web.Request) -> web.Response:
    """The Router's own OpenAPI document: the contract this emulator answers by."""
    return web.Response(body=OPENAPI_DOCUMENT.read_bytes(), content_type="application/json")


async def card_status(request: web.Request) -> web.Response:
    """Public (no auth, no faults): what a verifier sees after scanning the QR code."""
    state = request.app[STATE]
    state.requests += 1
    card = state.store.card(request.match_info["escn"])
    if card is None or card.deleted:
        resp = error_response(not_found("card"))
    else:
        resp = json_response(status_view(card, state.today()))
    state.responses[resp.status] += 1
    return resp


# --- admin (no auth, no faults) --------------------------------------------------------------------


async def admin_health(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def admin_stats(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return json_response(
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
    return json_response(request.app[STATE].plan.config.to_dict())


async def admin_put_faults(request: web.Request) -> web.Response:
    try:
        config = FaultConfig.from_dict(await read_body(request))
    except ApiError as e:
        return error_response(e)
    except (TypeError, ValueError) as e:
        return error_response(invalid(str(e)))
    request.app[STATE].plan = FaultPlan(config)
    log.info("fault config replaced: %s", config.to_dict())
    return json_response(config.to_dict())


async def admin_reset(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.store.reset()
    state.requests = 0
    state.responses.clear()
    state.faults.clear()
    return json_response({"status": "reset"})


def create_app(
    api_keys: dict[str, str],
    store: Store,
    faults: FaultConfig | None = None,
    today: Callable[[], dt.date] = utc_today,
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
    r.add_get(f"{API}/cards/csv-config", api(csv_config))
    r.add_post(f"{API}/cards/validate-csv", api(validate_csv))
    r.add_post(f"{API}/cards", api(post_card, write=True))
    r.add_get(f"{API}/cards", api(list_cards))
    r.add_get(f"{API}/cards/{{escn}}", api(get_card))
    r.add_put(f"{API}/cards/{{escn}}", api(put_card, write=True))
    r.add_delete(f"{API}/cards/{{escn}}", api(delete_card, write=True))
    r.add_get(f"{API}/cards/{{escn}}/status", card_status)
    r.add_get(f"{API}/cards/{{escn}}/qr", card_qr)
    picture = f"{API}/organisations/{{id}}/person/{{esi}}/picture"
    r.add_get(picture, api(get_picture, error_type="application/octet-stream"))
    r.add_post(picture, api(upload_picture, write=True))
    r.add_delete(picture, api(delete_picture, write=True))
    r.add_get(API_DOCS, api_docs)
    r.add_get(f"{ADMIN}/health", admin_health)
    r.add_get(f"{ADMIN}/stats", admin_stats)
    r.add_get(f"{ADMIN}/faults", admin_get_faults)
    r.add_put(f"{ADMIN}/faults", admin_put_faults)
    r.add_post(f"{ADMIN}/reset", admin_reset)
    return app
