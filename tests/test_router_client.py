"""RouterClient against a scriptable aiohttp fault server on 127.0.0.1 (real HTTP), plus the pure
body builders. The project emulator is tested elsewhere; this server only plays faults."""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import functools
import itertools
import json
import logging
import math
import socket
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from aiohttp import web

from etl.domain.router_bodies import card_body, person_body
from etl.resources.router import RouterClient
from etl.resources.router_errors import (
    RouterAccessDenied,
    RouterAuthError,
    RouterBadRequest,
    RouterConflict,
    RouterError,
    RouterNotFound,
    RouterUnavailable,
)
from etl.resources.router_http import RouterStats, retry_after_seconds
from etl.resources.throttle import Throttle

KEY = "k3y-5ecr3t-do-not-leak-0123456789"
PIC = "999978433"
ENV = "UNIFE_ROUTER_KEY"
ESI = "urn:schac:personalUniqueCode:int:esi:unife.it:191275"
ESCN = "c3ddd400-d3ef-103e-9234-001999978433"
PREFIX = "/esc-rest"


def run_async(fn: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(fn(*args, **kwargs))

    return wrapper


# ---- the fault server ----------------------------------------------------------------------------


@dataclass
class Seen:
    method: str
    raw_path: str  # as on the wire, before any decoding
    query_string: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    at: float


class FaultServer:
    """Each request pops the next planned fault for its path (``plan``); when none is left it gets a
    Router-like default answer. Records every request and the peak number in flight."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.plans: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
        self.delay = 0.0
        self.in_flight = 0
        self.max_in_flight = 0
        self.persons: list[dict[str, Any]] = []
        # "spring" | "bare" (content only) | "stuck" (ignores `page`) | "stuck-bare" (both)
        self.list_style = "spring"
        self.port = 0

    def plan(self, path: str, *actions: tuple[Any, ...]) -> None:
        self.plans[path].extend(actions)

    def hits(self, path: str) -> list[Seen]:
        return [s for s in self.seen if s.raw_path.split("?")[0] == PREFIX + path]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{PREFIX}"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.seen.append(
            Seen(
                request.method,
                request.raw_path,
                request.query_string,
                dict(request.query),
                dict(request.headers),
                body,
                time.monotonic(),
            )
        )
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            path = request.path.removeprefix(PREFIX)
            queue = self.plans.get(path)
            if queue:
                action = queue.pop(0)
                kind = action[0]
                if kind == "status":
                    _, status, payload, headers = (*action, None, None)[:4]
                    if isinstance(payload, dict | list):
                        return web.json_response(payload, status=status, headers=headers)
                    data = payload.encode() if isinstance(payload, str) else (payload or b"")
                    return web.Response(body=data, status=status, headers=headers, content_type="text/html")
                if kind == "drop":
                    request.transport.close()  # type: ignore[union-attr]
                    return web.Response()
                if kind == "garbage":
                    request.transport.write(b"NOT HTTP AT ALL\r\n\r\n")  # type: ignore[union-attr]
                    request.transport.close()  # type: ignore[union-attr]
                    return web.Response()
                if kind == "sleep":
                    await asyncio.sleep(action[1])
            return self.default(request, path, body)
        finally:
            self.in_flight -= 1

    def default(self, request: web.Request, path: str, body: bytes) -> web.StreamResponse:
        q = request.query
        if path == "/api/v2/persons" and request.method == "GET":
            return web.json_response(self.page(self.persons, q))
        if path == "/api/v2/cards" and request.method == "GET":
            esi = q.get("search", "").rpartition("person.identifier:")[2]
            cards = [{"cardNumber": f"card-{i}", "person": esi} for i in range(3)]
            return web.json_response(self.page(cards, q))
        if path == "/api/v2/cards/generate-escn":
            n = int(q["numberOfESCN"])
            if n > 100:
                return web.json_response({"code": "SE-9999", "message": "Internal error"}, status=500)
            start = len(self.seen)
            return web.json_response([f"{start:08x}-0000-1000-8000-{n:03d}{q['pic']}"[:36] for _ in range(n)])
        if path.endswith("/qr"):
            return web.Response(
                text='<svg xmlns="http://www.w3.org/2000/svg"></svg>', content_type="image/svg+xml"
            )
        if request.method == "DELETE":
            return web.Response(status=204)
        echo = {"method": request.method, "path": path, "body": json.loads(body) if body else None}
        return web.json_response(echo, status=201 if request.method == "POST" else 200)

    def page(self, items: list[Any], q: Any) -> dict[str, Any]:
        number = 0 if self.list_style.startswith("stuck") else int(q.get("page", 0))
        size = min(int(q.get("size", 20)), 10)  # the Router's silent cap
        chunk = items[number * size : (number + 1) * size]
        if self.list_style.endswith("bare"):
            return {"content": chunk}
        return {
            "content": chunk,
            "empty": not chunk,
            "links": [],
            "page": {
                "number": number,
                "size": size,
                "totalElements": len(items),
                "totalPages": math.ceil(len(items) / size),
            },
        }


@asynccontextmanager
async def fault_server(port: int = 0) -> AsyncIterator[FaultServer]:
    srv = FaultServer()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", srv.handle)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
    await runner.setup()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    srv.port = sock.getsockname()[1]
    await web.SockSite(runner, sock).start()
    try:
        yield srv
    finally:
        await runner.cleanup()


def make_client(base_url: str, transport: str = "aiohttp", **kw: Any) -> RouterClient:
    kw.setdefault("backoff_base_s", 0.005)
    kw.setdefault("timeout_s", 2.0)
    tr = httpx.AsyncHTTPTransport() if transport == "httpcore" else None
    return RouterClient(base_url, KEY, "unife", PIC, ENV, transport=tr, **kw)


@pytest.fixture(params=["aiohttp", "httpcore"])
def transport(request: pytest.FixtureRequest) -> str:
    """The default transport, and plain httpx, must behave the same (errors map differently)."""
    return request.param


def assert_key_absent(exc: BaseException | None, caplog: pytest.LogCaptureFixture) -> None:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        for text in (str(exc), repr(exc), *map(repr, exc.args), repr(vars(exc))):
            assert KEY not in text
        exc = exc.__cause__ or exc.__context__
    for record in caplog.records:
        assert KEY not in record.getMessage()
        assert KEY not in repr(record.args)


# ---- retries -------------------------------------------------------------------------------------

RETRYABLE = {
    "429": ("status", 429, {"code": "RL-0001", "message": "slow down"}),
    "500": ("status", 500, {"code": "SE-9999", "message": "boom"}),
    "502": ("status", 502, "<html><title>502 Bad Gateway</title></html>"),
    "503": ("status", 503, ""),
    "504": ("status", 504, "<html><body>Gateway Timeout</body></html>"),
    "timeout": ("sleep", 5.0),
    "dropped": ("drop",),
    "garbage": ("garbage",),
}


@pytest.mark.parametrize("fault", list(RETRYABLE))
@run_async
async def test_retryable_fault_twice_then_success(fault: str, transport: str, caplog: Any) -> None:
    caplog.set_level(logging.DEBUG)
    async with fault_server() as srv, make_client(srv.base_url, transport, timeout_s=0.3) as c:
        path = f"/api/v2/persons/{ESI}"
        srv.plan(path, RETRYABLE[fault], RETRYABLE[fault])
        assert (await c.get_person(ESI))["path"] == path
        assert len(srv.hits(path)) == 3
        # aiohttp itself resends a GET once when a kept-alive connection drops: count at least one.
        assert c.stats.retries == 2 or (fault == "dropped" and c.stats.retries >= 1)
        assert c.stats.calls == 1 and c.stats.errors_by_kind == {}
    ours = [r.getMessage() for r in caplog.records if r.name == "etl.resources.router"]
    assert any(
        f"GET /api/v2/persons/{{esi}} failed ({c.stats.retries_by_cause.most_common(1)[0][0]})" in m
        for m in ours
    )
    assert not any(ESI in m for m in ours)  # our logs name no person
    assert_key_absent(None, caplog)


@run_async
async def test_post_is_retried_too(transport: str) -> None:
    async with fault_server() as srv, make_client(srv.base_url, transport) as c:
        srv.plan("/api/v2/cards", ("status", 503, ""))
        assert (await c.create_card({"cardNumber": ESCN}))["body"] == {"cardNumber": ESCN}
        assert len(srv.hits("/api/v2/cards")) == 2


@run_async
async def test_retries_exhausted_raise_unavailable_with_last_cause(transport: str, caplog: Any) -> None:
    caplog.set_level(logging.DEBUG)
    async with fault_server() as srv, make_client(srv.base_url, transport, max_retries=2) as c:
        path = f"/api/v2/cards/{ESCN}"
        srv.plan(path, *[("status", 502, "<html><head><title>502 Bad Gateway</title></head></html>")] * 5)
        with pytest.raises(RouterUnavailable) as ei:
            await c.get_card(ESCN)
    e = ei.value
    assert len(srv.hits(path)) == 3 and e.attempts == 3
    assert e.status == 502 and e.code is None and e.router_message == "502 Bad Gateway"  # HTML, parsed
    assert "502 Bad Gateway" in str(e) and "after 3 attempts" in str(e) and "unife" in str(e)
    assert not e.is_permanent and not e.is_auth
    assert c.stats.errors_by_kind == {"unavailable": 1} and c.stats.retries == 2
    assert_key_absent(e, caplog)


@run_async
async def test_connection_refused_until_the_router_comes_up(caplog: Any) -> None:
    caplog.set_level(logging.DEBUG)
    with socket.socket() as s:  # a port nobody listens on (yet)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}{PREFIX}"
    async with make_client(base, max_retries=2) as c:
        with pytest.raises(RouterUnavailable) as ei:
            await c.get_person(ESI)
        assert ei.value.attempts == 3 and ei.value.status is None
        assert "connect" in (ei.value.last_cause or "")
        assert c.stats.retries_by_cause["connect"] == 2
        assert_key_absent(ei.value, caplog)

    done = asyncio.Event()

    async def start_late() -> None:
        await asyncio.sleep(0.15)
        async with fault_server(port) as srv:
            await done.wait()
            assert srv.hits(f"/api/v2/persons/{ESI}")

    async with make_client(base, max_retries=8, backoff_base_s=0.05, backoff_max_s=0.2) as c:
        server = asyncio.create_task(start_late())
        assert (await c.get_person(ESI))["method"] == "GET"
        assert c.stats.retries >= 1
        done.set()
        await server


@run_async
async def test_non_retryable_5xx_fails_at_once() -> None:
    async with fault_server() as srv, make_client(srv.base_url) as c:
        srv.plan(f"/api/v2/persons/{ESI}", ("status", 501, {"code": "SE-0501", "message": "nope"}))
        with pytest.raises(RouterUnavailable) as ei:
            await c.get_person(ESI)
        assert ei.value.status == 501 and ei.value.code == "SE-0501"
        assert len(srv.seen) == 1


# ---- Retry-After ---------------------------------------------------------------------------------


@run_async
async def test_retry_after_seconds_pauses_the_whole_client() -> None:
    async with fault_server() as srv, make_client(srv.base_url, backoff_base_s=0.001) as c:
        srv.plan(f"/api/v2/persons/{ESI}", ("status", 429, "", {"Retry-After": "1"}))
        t0 = time.monotonic()
        first = asyncio.create_task(c.get_person(ESI))
        await asyncio.sleep(0.2)
        await c.get_card(ESCN)  # another task: must wait for the pause too
        other_at = srv.hits(f"/api/v2/cards/{ESCN}")[0].at
        await first
        elapsed = time.monotonic() - t0
        assert 0.9 <= elapsed < 3.0
        assert other_at - srv.hits(f"/api/v2/persons/{ESI}")[0].at >= 0.85
        assert c.stats.retries_by_cause == {"429": 1}


@run_async
async def test_retry_after_http_date_is_honoured() -> None:
    async with fault_server() as srv, make_client(srv.base_url, backoff_base_s=0.001) as c:
        when = email.utils.format_datetime(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=2), usegmt=True)
        srv.plan(f"/api/v2/cards/{ESCN}", ("status", 503, "", {"Retry-After": when}))
        t0 = time.monotonic()
        await c.get_card(ESCN)
        assert 0.8 <= time.monotonic() - t0 < 3.5  # the date has 1 s resolution


@run_async
async def test_retry_after_is_capped_at_backoff_max() -> None:
    async with fault_server() as srv, make_client(srv.base_url, backoff_max_s=0.2) as c:
        srv.plan(f"/api/v2/cards/{ESCN}", ("status", 503, "", {"Retry-After": "3600"}))
        t0 = time.monotonic()
        await c.get_card(ESCN)
        assert time.monotonic() - t0 < 1.5


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("2", 2.0),
        (" 0 ", 0.0),
        ("-5", 0.0),
        ("999", 10.0),
        ("nan", None),
        ("soon", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # in the past
        ("Wed, 99 Foo 2015 07:28:00 GMT", None),
    ],
)
def test_retry_after_parsing(value: str | None, expected: float | None) -> None:
    assert retry_after_seconds(value, 10.0) == expected


# ---- errors that are not retried -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "payload", "error", "code"),
    [
        (
            400,
            {"code": "ER-0100", "message": "fullName: size must be between 0 and 255"},
            RouterBadRequest,
            "ER-0100",
        ),
        (422, {"code": "ER-0101", "message": "unprocessable"}, RouterBadRequest, "ER-0101"),
        (404, {"code": "ER-0004", "message": "person not found"}, RouterNotFound, "ER-0004"),
        (409, {"code": "ER-0019", "message": "person already exists"}, RouterConflict, "ER-0019"),
        (418, "<html>teapot</html>", RouterBadRequest, None),
        (400, b"\xff\xfe\x00garbage", RouterBadRequest, None),
        (400, [1, 2, 3], RouterBadRequest, None),
        (400, {"code": 17, "error": "Bad Request"}, RouterBadRequest, None),
    ],
)
@run_async
async def test_permanent_errors_are_typed_and_not_retried(
    status: int, payload: Any, error: type[RouterError], code: str | None
) -> None:
    async with fault_server() as srv, make_client(srv.base_url) as c:
        srv.plan("/api/v2/persons", ("status", status, payload))
        with pytest.raises(error) as ei:
            await c.create_person(person_body(ESI, PIC, "Mario Rossi", None, "BACHELOR"))
        assert len(srv.seen) == 1
    e = ei.value
    assert (e.status, e.code) == (status, code)
    assert e.is_permanent and not e.is_auth
    assert "unife" in str(e) and "POST /api/v2/persons" in str(e)
    if isinstance(payload, dict) and isinstance(payload.get("message"), str):
        assert e.router_message == payload["message"] and payload["message"] in str(e)
    assert c.stats.errors_by_kind == {error.kind: 1}


@pytest.mark.parametrize("status", [401, 403])
@run_async
async def test_auth_errors_say_what_to_check_and_never_leak_the_key(status: int, caplog: Any) -> None:
    caplog.set_level(logging.DEBUG)
    # A gateway's error page that echoes the request headers back.
    page = f"<html><title>Forbidden</title><body>Authorization: Bearer {KEY}</body></html>"
    async with fault_server() as srv, make_client(srv.base_url) as c:
        srv.plan(f"/api/v2/persons/{ESI}", ("status", status, page))
        with pytest.raises(RouterAuthError) as ei:
            await c.get_person(ESI)
        assert len(srv.seen) == 1
        assert srv.seen[0].headers["Authorization"] == f"Bearer {KEY}"
    e = ei.value
    msg = str(e)
    assert e.is_auth and not e.is_permanent and e.status == status
    assert "unife" in msg and ENV in msg and PIC in msg
    if status == 403:
        assert "allow-listed" in msg
    assert_key_absent(e, caplog)
    assert KEY not in repr(c)


@run_async
async def test_auth_error_body_echoing_the_key_is_scrubbed(caplog: Any) -> None:
    caplog.set_level(logging.DEBUG)
    async with fault_server() as srv, make_client(srv.base_url) as c:
        srv.plan(f"/api/v2/persons/{ESI}", ("status", 401, {"code": "SE-0001", "message": f"bad key {KEY}"}))
        with pytest.raises(RouterAuthError) as ei:
            await c.get_person(ESI)
    assert ei.value.code == "SE-0001" and "bad key ***" in str(ei.value)
    assert_key_absent(ei.value, caplog)


@run_async
async def test_key_echoed_across_the_excerpt_cut_is_scrubbed_whole() -> None:
    page = "<html>" + "<br>" * 996 + f"Bearer {KEY}</html>"  # the key straddles character 4000
    async with fault_server() as srv, make_client(srv.base_url) as c:
        srv.plan(f"/api/v2/cards/{ESCN}", ("status", 400, page))
        with pytest.raises(RouterBadRequest) as ei:
            await c.get_card(ESCN)
    assert ei.value.router_message == "Bearer ***"
    assert KEY[:6] not in str(ei.value)


@run_async
async def test_se0000_on_one_person_is_a_per_item_denial_not_an_auth_failure() -> None:
    async with fault_server() as srv, make_client(srv.base_url) as c:
        srv.plan(f"/api/v2/persons/{ESI}", ("status", 403, {"code": "SE-0000", "message": "Access denied"}))
        with pytest.raises(RouterAccessDenied) as ei:
            await c.get_person(ESI)
    assert ei.value.is_permanent and not ei.value.is_auth and ei.value.code == "SE-0000"


@pytest.mark.parametrize("location", ["https://elsewhere.example/steal", f"{PREFIX}/api/v2/persons/other"])
@run_async
async def test_redirect_is_not_followed(location: str, caplog: Any) -> None:
    caplog.set_level(logging.DEBUG)
    async with fault_server() as srv, make_client(srv.base_url) as c:
        srv.plan(f"/api/v2/persons/{ESI}", ("status", 302, "", {"Location": location}))
        with pytest.raises(RouterUnavailable) as ei:
            await c.get_person(ESI)
        assert len(srv.seen) == 1
    assert ei.value.status == 302 and "redirect" in str(ei.value) and location in str(ei.value)
    assert_key_absent(ei.value, caplog)


@run_async
async def test_success_status_with_a_non_json_body_is_an_error_not_a_crash() -> None:
    async with fault_server() as srv, make_client(srv.base_url) as c:
        srv.plan(f"/api/v2/persons/{ESI}", ("status", 200, "<html>captive portal</html>"))
        with pytest.raises(
            RouterUnavailable, match=f"GET /api/v2/persons/{ESI} answered 200 with a non-JSON"
        ):
            await c.get_person(ESI)
        srv.plan(f"/api/v2/cards/{ESCN}/qr", ("status", 200, "<html>captive portal</html>"))
        with pytest.raises(RouterUnavailable, match="SVG"):
            await c.card_qr_svg(ESCN)
        srv.plan(f"/api/v2/cards/{ESCN}", ("status", 200, b"not gzip", {"Content-Encoding": "gzip"}))
        with pytest.raises(RouterUnavailable, match="request failed"):
            await c.get_card(ESCN)
        srv.plan(f"/api/v2/cards/{ESCN}", ("status", 200, [ESCN]))
        with pytest.raises(RouterUnavailable, match="not an object"):
            await c.get_card(ESCN)
        assert len(srv.seen) == 4 and c.stats.errors_by_kind == {"unavailable": 4}


# ---- wire format ---------------------------------------------------------------------------------


@run_async
async def test_esi_goes_raw_in_the_path(transport: str) -> None:
    async with fault_server() as srv, make_client(srv.base_url, transport) as c:
        await c.get_person(ESI)
        await c.update_person(ESI, {"identifier": ESI})
        assert await c.delete_person(ESI) == {}
        await c.get_card(ESCN)
        await c.card_status(ESCN)
    assert [s.raw_path for s in srv.seen] == [
        f"{PREFIX}/api/v2/persons/{ESI}",
        f"{PREFIX}/api/v2/persons/{ESI}",
        f"{PREFIX}/api/v2/persons/{ESI}",
        f"{PREFIX}/api/v2/cards/{ESCN}",
        f"{PREFIX}/api/v2/cards/{ESCN}/status",
    ]
    assert [s.method for s in srv.seen] == ["GET", "PUT", "DELETE", "GET", "GET"]


@pytest.mark.parametrize("bad", ["", "a/b", "a b", "a%41", "a;b", "a?b", "a#b", "x" * 256, "è"])
@run_async
async def test_identifiers_that_would_change_the_url_are_refused_before_sending(bad: str) -> None:
    async with fault_server() as srv, make_client(srv.base_url) as c:
        with pytest.raises(RouterBadRequest) as ei:
            await c.get_person(bad)
        with pytest.raises(RouterBadRequest):
            await c.update_card(bad, {})
        with pytest.raises(RouterBadRequest):
            c.iter_cards(bad)
        assert srv.seen == [] and ei.value.is_permanent


@run_async
async def test_headers_and_json_body_on_the_wire() -> None:
    async with fault_server() as srv, make_client(srv.base_url) as c:
        body = person_body(ESI, PIC, "Mario Rossi", None, "MASTER")
        out = await c.create_person({**body, "extra": None})
        svg = await c.card_qr_svg(ESCN)
    post, qr = srv.seen
    assert post.headers["Authorization"] == f"Bearer {KEY}"
    assert post.headers["Content-Type"] == "application/json"
    assert post.headers["Accept"] == "application/json"
    assert json.loads(post.body) == body and "null" not in post.body.decode()
    assert out["body"] == body
    assert qr.headers["Accept"] == "image/svg+xml" and svg.startswith("<svg")


@run_async
async def test_card_search_filter_keeps_its_plus_sign(transport: str) -> None:
    async with fault_server() as srv, make_client(srv.base_url, transport) as c:
        cards = [card async for card in c.iter_cards(ESI)]
    assert len(cards) == 3
    (req,) = srv.seen
    # A literal '+' in a query string decodes to a space: it must travel as %2B.
    assert req.query["search"] == f"person.identifierCode:ESI<+>person.identifier:{ESI}"
    assert "%2B" in req.query_string


# ---- paging and ESCN generation ------------------------------------------------------------------


@pytest.mark.parametrize("style", ["spring", "bare"])
@run_async
async def test_page_walker_crosses_the_silent_size_cap(style: str) -> None:
    async with fault_server() as srv, make_client(srv.base_url) as c:
        srv.list_style = style
        srv.persons = [{"identifier": f"{ESI}{i}"} for i in range(23)]
        got = [p async for p in c.iter_persons(page_size=50)]
        assert got == srv.persons
        assert [s.query["page"] for s in srv.seen] == ["0", "1", "2"]
        assert all(s.query["size"] == "50" for s in srv.seen)

        srv.seen.clear()
        srv.persons = srv.persons[:20]  # an exact multiple: the walker needs one empty page to stop
        assert len([p async for p in c.iter_persons()]) == 20
        assert len(srv.seen) == (2 if style == "spring" else 3)  # spring: totalPages says 2

        srv.seen.clear()
        srv.persons = []
        assert [p async for p in c.iter_persons()] == [] and len(srv.seen) == 1


@pytest.mark.parametrize("style", ["stuck", "stuck-bare"])
@run_async
async def test_page_walker_refuses_a_server_that_ignores_the_page_parameter(style: str) -> None:
    async with fault_server() as srv, make_client(srv.base_url) as c:
        srv.list_style = style
        srv.persons = [{"identifier": f"{ESI}{i}"} for i in range(30)]
        with pytest.raises(RouterUnavailable, match="asked page 1"):
            _ = [p async for p in c.iter_persons()]
        for bad in (0, -1, True, 2.5):
            with pytest.raises(ValueError):
                c.iter_persons(page_size=bad)  # type: ignore[arg-type]


@run_async
async def test_generate_escn_splits_into_calls_of_at_most_100() -> None:
    async with fault_server() as srv, make_client(srv.base_url) as c:
        numbers = await c.generate_escn(250)
        assert len(numbers) == 250
        assert [s.query["numberOfESCN"] for s in srv.seen] == ["100", "100", "50"]
        assert all(s.query["pic"] == PIC and s.query["prefix"] == "1" for s in srv.seen)
        assert await c.generate_escn(0) == [] and len(srv.seen) == 3
        for bad in (-1, 1.5, True):
            with pytest.raises(ValueError):
                await c.generate_escn(bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            await c.generate_escn(1, prefix=1000)


# ---- concurrency and rate --------------------------------------------------------------------------


@run_async
async def test_concurrency_bound_is_never_exceeded() -> None:
    async with fault_server() as srv, make_client(srv.base_url, concurrency=5) as c:
        srv.delay = 0.02
        await asyncio.gather(*(c.get_card(ESCN) for _ in range(40)))
        assert srv.max_in_flight == 5
        assert c.stats.calls == 40 and c.stats.attempts == 40


@run_async
async def test_requests_per_second_limit_is_respected_across_tasks() -> None:
    async with fault_server() as srv, make_client(srv.base_url, requests_per_second=40) as c:
        t0 = time.monotonic()
        await asyncio.gather(*(c.get_card(ESCN) for _ in range(25)))
        elapsed = time.monotonic() - t0
    assert 0.55 <= elapsed < 2.5  # 24 intervals of 25 ms
    arrivals = sorted(s.at for s in srv.seen)
    in_any_quarter_second = max(sum(1 for b in arrivals if a <= b < a + 0.25) for a in arrivals)
    assert in_any_quarter_second <= 10 + 5  # slack: a stalled loop on a busy machine bunches a few


@pytest.mark.parametrize(("burst", "immediate"), [(1, 1), (5, 5)])
@run_async
async def test_throttle_spaces_sends_after_its_burst(burst: int, immediate: int) -> None:
    throttle = Throttle(100, burst=burst)
    t0 = time.monotonic()

    async def one() -> float:
        await throttle.wait()
        return time.monotonic() - t0

    times = sorted(await asyncio.gather(*(one() for _ in range(immediate + 10))))
    assert times[immediate - 1] - times[0] < 0.005  # the burst goes at once
    assert times[-1] - times[0] >= 0.095  # then 10 more at 100/s
    if burst == 1:  # and never two sends closer than 1/rate (a bigger bucket may catch up after a stall)
        assert min(b - a for a, b in itertools.pairwise(times)) >= 0.009
    throttle.pause(0.2)
    t1 = time.monotonic()
    await throttle.wait()
    assert time.monotonic() - t1 >= 0.19


@pytest.mark.parametrize("rate", [0, -1, math.nan, math.inf])
def test_throttle_refuses_bad_rates(rate: float) -> None:
    with pytest.raises(ValueError):
        Throttle(rate)


# ---- stats and construction ----------------------------------------------------------------------


@run_async
async def test_stats_cumulate_calls_and_latency() -> None:
    async with fault_server() as srv, make_client(srv.base_url) as c:
        assert c.stats.latency_percentile(50) is None
        srv.plan(f"/api/v2/cards/{ESCN}", ("status", 503, ""))
        for _ in range(5):
            await c.get_card(ESCN)
        with pytest.raises(RouterNotFound):
            srv.plan(f"/api/v2/cards/{ESCN}", ("status", 404, {"code": "ER-0404", "message": "?"}))
            await c.get_card(ESCN)
    s = c.stats
    assert (s.calls, s.attempts, s.retries) == (6, 7, 1)
    assert s.errors_by_kind == {"not_found": 1} and s.retries_by_cause == {"503": 1}
    p50, p95 = s.latency_percentile(50), s.latency_percentile(95)
    assert p50 is not None and p95 is not None and 0 < p50 <= p95 < 2
    assert s.as_dict()["calls"] == 6
    with pytest.raises(ValueError):
        s.latency_percentile(101)


def test_latency_reservoir_keeps_memory_flat() -> None:
    s = RouterStats()
    s.RESERVOIR = 100
    for i in range(10_000):
        s.record_latency(i / 1000)
    assert len(s._latencies) == 100
    assert 2.5 < (s.latency_percentile(50) or 0) < 7.5  # true median 5.0


@pytest.mark.parametrize("key", ["", " ", f"{KEY} x", f"{KEY}\r{KEY}", f"{KEY}è", f"a\nb{KEY}"])
def test_api_key_that_cannot_travel_in_a_header_is_refused_without_being_quoted(key: str) -> None:
    with pytest.raises(ValueError, match=ENV) as ei:
        RouterClient("http://127.0.0.1:1/esc-rest", key, "unife", PIC, ENV)
    assert KEY not in str(ei.value)


@run_async
async def test_api_key_surrounding_whitespace_is_stripped() -> None:
    async with fault_server() as srv, RouterClient(srv.base_url, f" {KEY}\n", "unife", PIC, ENV) as c:
        await c.get_card(ESCN)
    assert srv.seen[0].headers["Authorization"] == f"Bearer {KEY}"


def test_constructor_validates_without_quoting_the_key() -> None:
    with pytest.raises(ValueError, match="http"):
        RouterClient("ftp://x", KEY, "unife", PIC, ENV)
    with pytest.raises(ValueError) as ei:
        RouterClient("http://127.0.0.1:1", KEY, "unife", PIC, ENV, concurrency=0)
    assert KEY not in str(ei.value)


@run_async
async def test_closed_client_refuses_calls() -> None:
    c = make_client("http://127.0.0.1:1/esc-rest")
    async with c:
        pass
    with pytest.raises(RuntimeError, match="closed"):
        await c.get_person(ESI)


# ---- body builders (pure) ------------------------------------------------------------------------


def test_person_body() -> None:
    assert person_body(ESI, PIC, "Mario Rossi", "m.rossi@unife.it", "BACHELOR") == {
        "identifier": ESI,
        "identifierCode": "ESI",
        "personOrganisationUpdateViews": [
            {
                "organisationIdentifier": PIC,
                "fullName": "Mario Rossi",
                "email": "m.rossi@unife.it",
                "academicLevel": "BACHELOR",
            }
        ],
    }
    assert (
        "email"
        not in person_body(ESI, PIC, "Mario Rossi", None, "DOCTORATE")["personOrganisationUpdateViews"][0]
    )


@pytest.mark.parametrize(
    ("args", "exc", "needle"),
    [
        ((ESI, PIC, "Mario Rossi", None, "PHD"), ValueError, "academic_level"),
        ((ESI, PIC, "M" * 256, None, "MASTER"), ValueError, "full_name"),
        ((ESI, PIC, "  ", None, "MASTER"), ValueError, "full_name"),
        ((ESI, PIC, "Mario Rossi", "not-an-address", "MASTER"), ValueError, "email"),
        ((ESI, "12345", "Mario Rossi", None, "MASTER"), ValueError, "pic"),
        (("urn:x:191275", PIC, "Mario Rossi", None, "MASTER"), ValueError, "esi"),
        ((ESI, PIC, None, None, "MASTER"), TypeError, "full_name"),
    ],
)
def test_person_body_rejects_bad_input_without_quoting_personal_data(
    args: tuple, exc: type, needle: str
) -> None:
    with pytest.raises(exc, match=needle) as ei:
        person_body(*args)
    assert (
        "Mario" not in str(ei.value) and "MMMM" not in str(ei.value) and "not-an-address" not in str(ei.value)
    )


def test_card_body() -> None:
    body = card_body(ESCN, ESI, PIC, "SMART_PASSIVE", "ACTIVE", dt.date(2026, 9, 1), dt.date(2027, 10, 31))
    assert body == {
        "cardNumber": ESCN,
        "cardStatusType": "ACTIVE",
        "cardType": "SMART_PASSIVE",
        "issuedAt": "2026-09-01",
        "expiresAt": "2027-10-31",
        "issuerIdentifier": PIC,
        "personIdentifier": ESI,
    }
    minted_by_router = card_body(
        None, ESI, PIC, "PASSIVE", "INACTIVE", dt.date(999, 1, 2), dt.date(999, 1, 2), "M. R."
    )
    assert "cardNumber" not in minted_by_router
    assert minted_by_router["issuedAt"] == "0999-01-02" and minted_by_router["displayName"] == "M. R."


@pytest.mark.parametrize(
    ("change", "exc", "needle"),
    [
        ({"card_type": "PLASTIC"}, ValueError, "card_type"),
        ({"status": "EXPIRED"}, ValueError, "status"),
        ({"issued_at": dt.datetime(2026, 9, 1, 12, 0)}, TypeError, "issued_at"),
        ({"expires_at": "2027-10-31"}, TypeError, "expires_at"),
        ({"expires_at": dt.date(2026, 8, 31)}, ValueError, "before"),
        ({"escn": ESCN.upper()}, ValueError, "escn"),
        ({"escn": ESCN[:-9] + "123456789"}, ValueError, "PIC"),
        ({"display_name": "x" * 256}, ValueError, "display_name"),
    ],
)
def test_card_body_rejects_bad_input(change: dict[str, Any], exc: type, needle: str) -> None:
    args: dict[str, Any] = {
        "escn": ESCN,
        "esi": ESI,
        "pic": PIC,
        "card_type": "PASSIVE",
        "status": "ACTIVE",
        "issued_at": dt.date(2026, 9, 1),
        "expires_at": dt.date(2027, 10, 31),
    }
    with pytest.raises(exc, match=needle):
        card_body(**(args | change))
