"""aiohttp application of the ESC Router emulator: API routes, auth, fault injection, admin routes.

Every operation of the Router's OpenAPI document (``esc-router-v2.openapi.json`` beside this module,
served at ``/esc-rest/v3/api-docs/V2``) is served with the document's shapes (``views.py``).
Decisions where the Router's behaviour is undocumented (see docs/esc-router-v2.md):
- a card for a person not registered with the caller's organisation answers 400 ``ER-0003``;
- a deleted card answers 404 everywhere (read, update, status, QR) but its number stays taken:
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
import csv
import datetime as dt
import io
import json
import logging
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import segno
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from PIL import Image, UnidentifiedImageError

from etl.domain.escn import EscnMinter
from etl.domain.esi import same_esi
from etl.emulator.contract import (
    CARD_EXISTS,
    PERSON_EXISTS,
    PERSON_UNKNOWN,
    SERVER_ERROR,
    ApiError,
    CsvProblem,
    access_denied,
    address_not_allowed,
    csv_columns,
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
    validate_csv_rows,
)
from etl.emulator.faults import Fault, FaultConfig, FaultPlan
from etl.emulator.store import CARD_SORTS, PERSON_SORTS, Card, Conflict, Relation, Store
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
PICTURE_SIZE = (200, 300)
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


def _error(e: ApiError, content_type: str = "application/json") -> web.Response:
    # Spring renders an error in the media type the operation produces (the picture download's
    # errors are ApiErrorMessage JSON sent as application/octet-stream, as its document says).
    resp = _json(e.body(), e.status)
    resp.content_type = content_type
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
        resp = _json({"code": "EMU-429", "message": "Too Many Requests"}, 429)
        resp.headers["Retry-After"] = str(cfg.retry_after_s)
        return resp
    messages = {"500": "Internal Server Error", "502": "Bad Gateway", "503": "Service Unavailable"}
    return _json({"code": f"EMU-{kind}", "message": messages[kind]}, int(kind))


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
            return _error(e, error_type)
        plan = state.plan
        if plan.denies(pic):  # the gateway refuses before anything runs
            state.responses[403] += 1
            return _error(address_not_allowed(), error_type)
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
            resp = _error(e, error_type)
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
    return request.match_info["esi"]  # decoded: a client may send the ESI raw or percent-encoded


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
    content = [person_lite_view(r) for r in rows]
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
    card = parse_card(await _body(request), pic, create=False)
    if not same_esi(card.person_identifier, current.person_identifier):
        raise invalid("personIdentifier: a card cannot move to another person")
    today = state.today()
    if current.expires_at < today and card.expires_at < today:
        raise invalid("expiresAt: an EXPIRED card is revived only together with a future expiresAt")
    return _json(card_view(state.store.replace_card(number, card, _now()), today))


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
    content = [card_lite_view(c) for c in rows]
    return _json(page_view(content, total, page, str(request.url.with_query(None)), dict(request.query)))


async def generate_escn(request: web.Request, state: EmulatorState, pic: str) -> web.Response:
    prefix, count = parse_generate(dict(request.query), pic)
    minter = state.minter(pic, prefix)
    return _json([minter.mint() for _ in range(count)])


async def card_qr(request: web.Request) -> web.Response:
    """Public like the status (the document lists no Authorization for it): the artwork of what is
    printed on the card. The document lists no 404 here: an unknown card answers 400."""
    state = request.app[STATE]
    state.requests += 1
    card = state.store.card(request.match_info["escn"])
    svg = "image/svg+xml" in request.headers.get("Accept", "")
    if card is None or card.deleted:
        state.responses[400] += 1
        return _error(invalid("escn: no such card"), "image/svg+xml" if svg else "text/plain")
    state.responses[200] += 1
    url = qr_url(card.card_number)
    if svg:
        buf = io.BytesIO()
        segno.make(url, error="m", version=4, boost_error=False).save(buf, kind="svg", border=4)
        return web.Response(body=buf.getvalue(), content_type="image/svg+xml")
    return web.Response(text=url, content_type="text/plain")


async def csv_config(request: web.Request, state: EmulatorState, pic: str) -> web.Response:
    return _json(csv_columns())


async def validate_csv(request: web.Request, state: EmulatorState, pic: str) -> web.Response:
    """``CsvValidationError`` items, one per problem; an empty list when the file is valid."""
    operation = request.query.get("operation")
    if operation not in ("CREATE", "UPDATE", "DELETE"):
        return _json([CsvProblem(0, "operation", "must be CREATE, UPDATE or DELETE").view()], 400)
    data = await _multipart_file(request)
    if data is None:
        return _json([CsvProblem(0, "file", "a multipart file field is required").view()], 400)
    try:
        rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig"))))
    except (UnicodeDecodeError, csv.Error):
        return _json([CsvProblem(0, "file", "not a UTF-8 CSV file").view()], 400)

    def known(number: str) -> bool:
        card = state.store.card(number)
        return card is not None and not card.deleted and card.pic == pic

    problems = validate_csv_rows(rows, operation, pic, known)
    return _json([p.view() for p in problems])


async def _multipart_file(request: web.Request) -> bytes | None:
    if not request.content_type.startswith("multipart/"):
        return None
    try:
        form = await request.post()
    except (ValueError, web.HTTPException, HttpProcessingError):  # a malformed multipart body
        return None
    field = form.get("file")
    if isinstance(field, web.FileField):
        return field.file.read()
    if isinstance(field, str | bytes):
        return field.encode() if isinstance(field, str) else field
    return None


def _picture_owner(request: web.Request, state: EmulatorState, pic: str) -> Relation:
    if request.match_info["id"] != pic:
        raise access_denied()  # another organisation's pictures
    return _our_relation(state, _path_esi(request), pic)


async def get_picture(request: web.Request, state: EmulatorState, pic: str) -> web.Response:
    rel = _picture_owner(request, state, pic)
    image = state.store.picture(rel.person_id, pic)
    if image is None:
        raise not_found("picture")
    return web.Response(body=image, content_type="application/octet-stream")


async def upload_picture(request: web.Request, state: EmulatorState, pic: str) -> web.Response:
    rel = _picture_owner(request, state, pic)
    resize = request.query.get("resize", "false").lower()
    if resize not in ("true", "false"):
        raise invalid("resize: true or false")
    data = await _multipart_file(request)
    if data is None:
        raise invalid("file: a multipart file field is required")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            if img.size != PICTURE_SIZE:
                if resize != "true":
                    raise invalid("file: must be a 200x300 image (or resize=true)")
                img = img.resize(PICTURE_SIZE)
            out = io.BytesIO()
            img.convert("RGB").save(out, format="JPEG", quality=85)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        raise invalid("file: not an image") from None
    state.store.put_picture(rel.person_id, pic, out.getvalue())
    return _json("picture stored", 201)


async def delete_picture(request: web.Request, state: EmulatorState, pic: str) -> web.Response:
    """Idempotent: 204 whether or not a picture was there. The document lists no 404 here, so a
    person who is not ours answers 403."""
    try:
        rel = _picture_owner(request, state, pic)
    except ApiError as e:
        raise access_denied() if e.status == 404 else e from None
    state.store.delete_picture(rel.person_id, pic)
    return web.Response(status=204)


async def api_docs(request: web.Request) -> web.Response:
    """The Router's own OpenAPI document: the contract this emulator answers by."""
    return web.Response(body=OPENAPI_DOCUMENT.read_bytes(), content_type="application/json")


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
