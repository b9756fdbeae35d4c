"""Async client of the ESC Router REST API v2 (see docs/esc-router-v2.md), on ``httpx.AsyncClient``.

- Transport: httpx's API over the ``httpx-aiohttp`` transport by default: bench/bench_http_transport.py
  measured plain httpx's async pool at ~5x the client CPU per request (and ~1/4 of the requests/s)
  at concurrency 16 on loopback. ``transport=`` overrides it (tests run both).
- Retries with exponential backoff and full jitter on 429/500/502/503/504, timeouts and connection
  errors; ``Retry-After`` is honoured (capped) and pauses the whole client. POSTs are retried too:
  callers treat 409 as "already done".
- At most ``concurrency`` requests in flight, optionally paced to ``requests_per_second``.
- Redirects are never followed: the Bearer key must not travel to another address.
- The API key lives only in the HTTP client's headers; it is scrubbed from any answer text quoted in
  errors and never appears in logs, reprs or messages.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import time
from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import Any, Self

import httpx
from httpx_aiohttp import AiohttpTransport

from etl.resources.router_errors import (
    RouterAccessDenied,
    RouterAuthError,
    RouterBadRequest,
    RouterConflict,
    RouterError,
    RouterNotFound,
    RouterUnavailable,
    RouterUnreachable,
    auth_error_message,
)
from etl.resources.router_http import (
    KEY_CHARS,
    PAGE_SIZE_CAP,
    TRANSPORT_ERRORS,
    RouterStats,
    check_page_size,
    encode_json,
    is_item_path,
    item_path,
    log_path,
    no_cookies,
    retry_after_seconds,
    transport_cause,
)
from etl.resources.throttle import Throttle

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
GENERATE_ESCN_MAX = 100  # more per call answers 500, not 400
ACCESS_DENIED_CODE = "SE-0000"  # on one person/card: it belongs only to other organisations


class RouterClient:
    def __init__(
        self,
        base_url: str,
        api_key: str,
        institution: str,
        pic: str,
        api_key_env: str,
        concurrency: int = 16,
        requests_per_second: float | None = None,
        timeout_s: float = 10.0,
        max_retries: int = 6,
        backoff_base_s: float = 0.2,
        backoff_max_s: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
        throttle: Throttle | None = None,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(
                f"university {institution}: Router base_url must be http(s)://, got {base_url!r}"
            )
        api_key = (api_key or "").strip()  # keys read from files often end with a newline
        if not KEY_CHARS.match(api_key):
            # Never quote it: a header-encoding error later would print the key.
            raise ValueError(
                f"university {institution}: the Router API key in environment variable {api_key_env} is "
                "empty or contains spaces, control or non-ASCII characters"
            )
        if concurrency < 1 or max_retries < 0 or timeout_s <= 0 or backoff_base_s < 0 or backoff_max_s < 0:
            raise ValueError(
                f"university {institution}: need concurrency >= 1, max_retries >= 0, timeout_s > 0 and "
                "non-negative backoff"
            )
        self.base_url = base_url.rstrip("/")
        self._base_path = httpx.URL(self.base_url).path.rstrip("/")  # to quote API paths in messages
        self.institution = institution
        self.pic = pic
        self.api_key_env = api_key_env
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.stats = RouterStats()
        self._key = api_key  # only for scrubbing echoes; never formatted anywhere
        self._semaphore = asyncio.Semaphore(concurrency)
        # ``throttle``: a schedule shared with other processes (SharedThrottle); else this client's own
        self._throttle = throttle or Throttle(requests_per_second)
        self._closed = False
        self._reached = False  # some answer came back: the Router is reachable from here
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {api_key}", "Accept": "application/json"},
            timeout=httpx.Timeout(timeout_s),
            follow_redirects=False,
            limits=limits,
            # No proxy, .netrc or CA bundle from the environment: the key goes to base_url only.
            # (A university behind an egress proxy would need an explicit setting; none exists yet.)
            trust_env=False,
            transport=transport or AiohttpTransport(limits=limits, trust_env=False),
        )
        # The Router sets no cookies, but httpx parses every response for them through
        # http.cookiejar: a large share of the client's CPU per call (cProfile), so skip it.
        self._http.cookies.extract_cookies = no_cookies  # type: ignore[method-assign]

    def __repr__(self) -> str:
        return f"RouterClient(institution={self.institution!r}, base_url={self.base_url!r}, pic={self.pic!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self._closed = True
        await self._http.aclose()

    # ---- persons -------------------------------------------------------------------------------

    async def create_person(self, body: Mapping[str, Any]) -> dict[str, Any]:
        return self._json_object(await self._call("POST", "/api/v2/persons", json_body=body))

    async def get_person(self, esi: str) -> dict[str, Any]:
        return self._json_object(await self._call("GET", item_path("persons", esi)))

    async def update_person(self, esi: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return self._json_object(await self._call("PUT", item_path("persons", esi), json_body=body))

    async def delete_person(self, esi: str) -> dict[str, Any]:
        return self._json_object(await self._call("DELETE", item_path("persons", esi)))

    def iter_persons(self, page_size: int = PAGE_SIZE_CAP) -> AsyncIterator[dict[str, Any]]:
        check_page_size(page_size)
        return self._walk("/api/v2/persons", {}, page_size)

    # ---- cards ---------------------------------------------------------------------------------

    async def create_card(self, body: Mapping[str, Any]) -> dict[str, Any]:
        return self._json_object(await self._call("POST", "/api/v2/cards", json_body=body))

    async def get_card(self, escn: str) -> dict[str, Any]:
        return self._json_object(await self._call("GET", item_path("cards", escn)))

    async def update_card(self, escn: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return self._json_object(await self._call("PUT", item_path("cards", escn), json_body=body))

    async def delete_card(self, escn: str) -> dict[str, Any]:
        return self._json_object(await self._call("DELETE", item_path("cards", escn)))

    def iter_cards(
        self, person_esi: str | None = None, page_size: int = PAGE_SIZE_CAP
    ) -> AsyncIterator[dict[str, Any]]:
        params: dict[str, str] = {}
        if person_esi is not None:
            item_path("persons", person_esi)  # same character rules as in a path
            params["search"] = f"person.identifierCode:ESI<+>person.identifier:{person_esi}"
        check_page_size(page_size)
        return self._walk("/api/v2/cards", params, page_size)

    async def card_status(self, escn: str) -> dict[str, Any]:
        return self._json_object(await self._call("GET", item_path("cards", escn) + "/status"))

    async def card_qr_svg(self, escn: str) -> str:
        path = item_path("cards", escn) + "/qr"
        resp = await self._call("GET", path, accept="image/svg+xml")
        text = resp.text
        if "<svg" not in text[:2000]:  # e.g. a gateway's HTML page answered 200
            raise self._unavailable(f"GET {path} answered {resp.status_code} without SVG artwork", resp)
        return text

    async def generate_escn(self, count: int, prefix: int = 1) -> list[str]:
        """``count`` server-minted card numbers, asked in calls of at most 100."""
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"count must be a non-negative int, got {count!r}")
        if isinstance(prefix, bool) or not isinstance(prefix, int) or not 0 <= prefix <= 999:
            raise ValueError(f"prefix must be an int within 0..999, got {prefix!r}")
        numbers: list[str] = []
        while len(numbers) < count:
            n = min(GENERATE_ESCN_MAX, count - len(numbers))
            params = {"prefix": str(prefix), "pic": self.pic, "numberOfESCN": str(n)}
            resp = await self._call("GET", "/api/v2/cards/generate-escn", params=params)
            batch = self._json(resp)
            if not isinstance(batch, list) or len(batch) != n or not all(isinstance(x, str) for x in batch):
                raise self._unavailable(f"generate-escn answered something other than {n} numbers", resp)
            numbers.extend(batch)
        return numbers

    # ---- plumbing ------------------------------------------------------------------------------

    async def _walk(self, path: str, params: dict[str, str], page_size: int) -> AsyncIterator[dict[str, Any]]:
        page, previous = 0, None
        while True:
            resp = await self._call("GET", path, params={**params, "page": str(page), "size": str(page_size)})
            body = self._json_object(resp)
            content = body.get("content") or []
            info: dict[str, Any] = page_info if isinstance(page_info := body.get("page"), dict) else {}
            if not isinstance(content, list):
                raise self._unavailable(f"GET {path} page {page}: `content` is not a list", resp)
            # A server ignoring `page` would make this loop forever.
            if info.get("number") not in (None, page) or (content and content == previous):
                raise self._unavailable(f"GET {path}: asked page {page}, got page {info.get('number')}", resp)
            previous = content
            for item in content:
                yield item
            # The Router says which size it applied; without that assume its documented cap.
            size = info.get("size")
            effective = size if isinstance(size, int) else min(page_size, PAGE_SIZE_CAP)
            total_pages = info.get("totalPages")
            if (
                body.get("empty") is True
                or not content
                or len(content) < effective
                or (isinstance(total_pages, int) and page + 1 >= total_pages)
            ):
                return
            page += 1

    async def _call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json_body: Mapping[str, Any] | None = None,
        accept: str = "application/json",
    ) -> httpx.Response:
        if self._closed:
            raise RuntimeError(f"RouterClient of university {self.institution} is closed")
        self.stats.calls += 1
        try:
            return await self._with_retries(method, path, params, json_body, accept)
        except RouterError as e:
            self.stats.errors_by_kind[e.kind] += 1
            raise

    async def _with_retries(
        self,
        method: str,
        path: str,
        params: Mapping[str, str] | None,
        json_body: Mapping[str, Any] | None,
        accept: str,
    ) -> httpx.Response:
        content = None if json_body is None else encode_json(json_body)
        headers = {"Accept": accept}
        if content is not None:
            headers["Content-Type"] = "application/json"
        attempt = 0
        while True:
            cause = ""
            retry_after: float | None = None
            failure = ""
            resp: httpx.Response | None = None
            async with self._semaphore:
                await self._throttle.wait()
                self.stats.attempts += 1
                started = time.perf_counter()
                try:
                    resp = await self._http.request(
                        method, path, params=params, content=content, headers=headers
                    )
                except TRANSPORT_ERRORS as e:
                    # Keep text, not the exception: aiohttp's carry the request headers (the key) in
                    # their repr, so they are never chained onto what we raise.
                    cause, failure = transport_cause(e), self._excerpt(f"{type(e).__name__}: {e}") or ""
                except httpx.HTTPError as e:  # unsupported protocol, invalid URL...: not transient
                    raise RouterUnavailable(
                        self._msg(method, path, f"request failed: {self._scrub(e)}")
                    ) from None
                else:
                    self.stats.record_latency(time.perf_counter() - started)
            if resp is not None:
                self._reached = True
                status = resp.status_code
                if 200 <= status < 300:
                    return resp
                if status not in RETRYABLE_STATUS:
                    raise self._error_for(method, path, resp)
                cause = str(status)
                retry_after = retry_after_seconds(resp.headers.get("Retry-After"), self.backoff_max_s)
            if attempt >= self.max_retries:
                raise self._exhausted(method, path, attempt + 1, cause, resp, failure)
            delay = retry_after if retry_after is not None else self._backoff(attempt)
            if retry_after is not None:
                self._throttle.pause(retry_after)  # the server asked the client, not this call, to wait
            attempt += 1
            self.stats.retries += 1
            self.stats.retries_by_cause[cause] += 1
            log.info(  # counted in the run's metadata and progress line; one line each would flood stderr
                "university %s: Router %s %s failed (%s), retry %d/%d in %.2fs",
                self.institution, method, log_path(path), cause, attempt, self.max_retries, delay,
            )  # fmt: skip
            await asyncio.sleep(delay)

    def _backoff(self, attempt: int) -> float:
        # Full jitter: spreads the retries of many tasks that failed together.
        return random.uniform(0, min(self.backoff_max_s, self.backoff_base_s * 2**attempt))

    def _error_for(self, method: str, path: str, resp: httpx.Response) -> RouterError:
        status = resp.status_code
        code, router_message = self._parse_error(resp)
        kw: dict[str, Any] = {"status": status, "code": code, "router_message": router_message}
        detail = (
            f"{status}" + (f" {code}" if code else "") + (f": {router_message}" if router_message else "")
        )
        if 300 <= status < 400:
            location = self._scrub(resp.headers.get("Location", "?"))[:200]
            msg = (
                f"answered a {status} redirect to {location}; redirects are never followed (the API key must "
                "not travel elsewhere): check the Router URL in the configuration"
            )
            return RouterUnavailable(self._msg(method, path, msg), **kw)
        if status == 403 and code == ACCESS_DENIED_CODE and is_item_path(path):
            return RouterAccessDenied(self._msg(method, path, f"access denied: {detail}"), **kw)
        if status in (401, 403):
            text = auth_error_message(
                status, institution=self.institution, pic=self.pic, api_key_env=self.api_key_env,
                method=method, path=log_path(path),
            )  # fmt: skip
            return RouterAuthError(
                text + (f" (Router said: {detail})" if code or router_message else ""), **kw
            )
        if status == 404:
            return RouterNotFound(self._msg(method, path, f"not found: {detail}"), **kw)
        if status == 409:
            return RouterConflict(self._msg(method, path, f"conflict: {detail}"), **kw)
        if 400 <= status < 500:
            return RouterBadRequest(self._msg(method, path, f"rejected the request: {detail}"), **kw)
        return RouterUnavailable(self._msg(method, path, f"failed: {detail}"), **kw)

    def _exhausted(
        self, method: str, path: str, attempts: int, cause: str, resp: httpx.Response | None, failure: str
    ) -> RouterUnavailable:
        code, router_message = self._parse_error(resp) if resp is not None else (None, None)
        last = (
            cause
            + (f" {code}" if code else "")
            + (f": {router_message or failure}" if router_message or failure else "")
        )
        if cause == "connect" and resp is None and not self._reached:
            return RouterUnreachable(
                f"university {self.institution}: the ESC Router at {self.base_url} is unreachable "
                f"({attempts} attempts, last: {last}): check [router] url and the network, then re-run",
                attempts=attempts,
                last_cause=last,
            )
        return RouterUnavailable(
            self._msg(method, path, f"still failing after {attempts} attempts (last: {last})"),
            status=None if resp is None else resp.status_code,
            code=code,
            router_message=router_message,
            attempts=attempts,
            last_cause=last,
        )

    def _json(self, resp: httpx.Response) -> Any:
        if not resp.content.strip():
            return {}  # 204 of a DELETE
        try:
            return json.loads(resp.content)
        except ValueError:
            # e.g. a gateway's HTML page with 200: the API promised JSON.
            what = resp.headers.get("Content-Type", "no content type")
            raise self._unavailable(
                f"{self._where(resp)} answered {resp.status_code} with a non-JSON body ({what})", resp
            ) from None

    def _json_object(self, resp: httpx.Response) -> dict[str, Any]:
        body = self._json(resp)
        if not isinstance(body, dict):
            raise self._unavailable(f"{self._where(resp)} answered JSON that is not an object", resp)
        return body

    def _unavailable(self, what: str, resp: httpx.Response) -> RouterUnavailable:
        self.stats.errors_by_kind[RouterUnavailable.kind] += 1
        return RouterUnavailable(f"university {self.institution}: ESC Router {what}", status=resp.status_code)

    def _parse_error(self, resp: httpx.Response) -> tuple[str | None, str | None]:
        """``{code, message}`` from a Router JSON body; a short text excerpt from anything else
        (a gateway's HTML page, garbage). Defensive: never raises."""
        if not resp.content.strip():
            return None, None
        # Scrub before cutting, so a key echoed across the cut cannot survive in part.
        text = self._scrub(resp.content.decode("utf-8", "replace"))[:4000]
        try:
            body = json.loads(text)
        except ValueError:
            body = None
        if isinstance(body, dict):
            code = body.get("code")
            message = body.get("message") or body.get("error")
            code = (code.strip()[:40] or None) if isinstance(code, str) else None
            return code, (self._excerpt(message) if isinstance(message, str) else None)
        if "<" in text:
            title = re.search(r"<title[^>]*>(.*?)</title>", text, re.I | re.S)
            text = title.group(1) if title else re.sub(r"<[^>]*>", " ", text)
        return None, self._excerpt(text)

    def _excerpt(self, text: str) -> str | None:
        cleaned = " ".join(self._scrub(text).split())
        cleaned = "".join(ch if ch.isprintable() else "?" for ch in cleaned)
        return (cleaned[:200] + "…" if len(cleaned) > 200 else cleaned) or None

    def _scrub(self, value: object) -> str:
        return str(value).replace(self._key, "***")

    def _where(self, resp: httpx.Response) -> str:
        return f"{resp.request.method} {resp.request.url.path.removeprefix(self._base_path)}"

    def _msg(self, method: str, path: str, what: str) -> str:
        return f"university {self.institution}: ESC Router {method} {path} {what}"
