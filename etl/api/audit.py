"""Every authenticated read leaves an ``api_audit`` row, committed before the answer leaves.

A killed API process must not have served a read it never recorded, so the middleware holds each
answer until its row is committed (or answers 503 instead when the row cannot be written). Rows are
group-committed: one thread writes whatever rows wait, in one transaction, while the next ones gather,
so under load a commit carries many requests (bench/bench_api.py measures what it costs).

The row says what the route actually used: the university and the query after validation (set by the
route on ``request.state.audit_university``/``audit_resource``), else the matched path parameters;
a request whose parameters failed validation names no university. A query naming a parameter twice is
refused (422) before any route runs: the audit and the route can never read different values.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Awaitable, Callable, Collection, MutableMapping
from typing import Any
from urllib.parse import parse_qsl, urlencode

from sqlalchemy import Engine, bindparam, insert, update
from sqlalchemy.exc import SQLAlchemyError

from etl.api.errors import error_body
from etl.store.models import ApiAudit, utcnow

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Send], Awaitable[None]]
NOSNIFF = (b"x-content-type-options", b"nosniff")
AUDIT_COLUMNS = ("token_id", "at", "action", "resource", "status", "bytes", "client", "institution")


class AuditUnavailable(Exception):
    """The row could not be committed: the read must not be answered."""


class AuditTrail:
    def __init__(self, engine: Engine, *, max_batch: int = 500) -> None:
        self._engine = engine
        self._max_batch = max_batch
        self._waiting: list[tuple[dict[str, Any], Callable[[int | None], None]]] = []
        self._cond = threading.Condition()
        self._stop = False
        # The INSERT in the driver's own dialect and parameter style, compiled once.
        table = ApiAudit.__table__
        compiled = (
            insert(ApiAudit).values({c: bindparam(c) for c in AUDIT_COLUMNS}).returning(ApiAudit.id)
        ).compile(dialect=engine.dialect)
        self._sql = str(compiled)
        self._positions = list(compiled.positiontup or ()) if compiled.positional else []
        self._processors = {c: table.c[c].type.bind_processor(engine.dialect) for c in AUDIT_COLUMNS}
        self._driver: Any = None  # the writer thread's DBAPI connection
        self._thread = threading.Thread(target=self._run, name="api-audit", daemon=True)
        self._thread.start()

    async def record(
        self,
        token_id: int,
        action: str,
        resource: str,
        status: int,
        nbytes: int = 0,
        client: str | None = None,
        institution: str | None = None,
    ) -> int:
        """Commit one row; its id once committed. Raises AuditUnavailable if it could not be."""
        row = {
            "token_id": token_id, "at": utcnow(), "action": action[:32], "resource": resource[:600],
            "status": status, "bytes": nbytes, "client": client[:64] if client else None,
            "institution": institution[:32] if institution else None,
        }  # fmt: skip
        loop = asyncio.get_running_loop()
        done: asyncio.Future[int | None] = loop.create_future()

        def settle(audit_id: int | None) -> None:  # in the writer thread
            loop.call_soon_threadsafe(_resolve, done, audit_id)

        with self._cond:
            if self._stop:
                raise AuditUnavailable
            self._waiting.append((row, settle))
            self._cond.notify()
        audit_id = await done
        if audit_id is None:
            raise AuditUnavailable
        return audit_id

    def set_bytes(self, audit_id: int, nbytes: int) -> None:
        """Correct a download's row when fewer bytes went out than were announced (client gone)."""
        try:
            with self._engine.begin() as conn:
                conn.execute(update(ApiAudit).where(ApiAudit.id == audit_id).values(bytes=nbytes))
        except SQLAlchemyError as e:
            log.error("api audit: row %d keeps the announced size (%s)", audit_id, type(e).__name__)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._stop:
                    self._cond.wait()
                if not self._waiting:
                    return
                batch = self._waiting[: self._max_batch]
                del self._waiting[: self._max_batch]
            ids = self._write([row for row, _ in batch])
            for i, (_, settle) in enumerate(batch):
                settle(ids[i] if ids else None)

    def _write(self, rows: list[dict[str, Any]]) -> list[int] | None:
        """One transaction for the batch on the thread's own driver connection: SQLAlchemy's per-call
        work was most of an audited read's cost (docs/performance.md)."""
        try:
            if self._driver is None:
                self._driver = self._engine.raw_connection()
            cursor = self._driver.cursor()
            ids = []
            for row in rows:
                cursor.execute(self._sql, self._params(row))
                ids.append(int(cursor.fetchone()[0]))
            self._driver.commit()
            return ids
        except Exception as e:  # the driver's own errors: the connection is dropped and made anew
            log.error("api audit: %d rows not written (%s): answered 503", len(rows), type(e).__name__)
            if self._driver is not None:
                with contextlib.suppress(Exception):
                    self._driver.close()
            self._driver = None
            return None

    def _params(self, row: dict[str, Any]) -> Any:
        values = {k: (p(v) if (p := self._processors[k]) else v) for k, v in row.items()}
        return [values[k] for k in self._positions] if self._positions else values

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(timeout=10)
        if self._driver is not None:
            self._driver.close()


def _resolve(done: asyncio.Future[int | None], audit_id: int | None) -> None:
    if not done.done():  # the request may have been cancelled (client gone)
        done.set_result(audit_id)


def audit_query(request: Any, path: str, audited_university: str | None, **used: object) -> None:
    """For a route reading its query: the audit row names the university and the parameters as the
    route validated them (not as the raw query string spelled them)."""
    request.state.audit_university = audited_university
    request.state.audit_resource = path + "?" + urlencode({k: v for k, v in used.items() if v is not None})


def repeated_parameter(query_string: bytes) -> str | None:
    """The first query parameter named twice (after percent-decoding, as the routes read them)."""
    if not query_string:
        return None
    seen: set[str] = set()
    for key, _ in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        if key in seen:
            return key
        seen.add(key)
    return None


async def send_error(send: Send, status: int, code: str, message: str, param: str | None = None) -> None:
    body = json.dumps(error_body(code, message, param)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), NOSNIFF]
    if status == 503:
        headers.append((b"retry-after", b"30"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class AuditMiddleware:
    """Refuses repeated query parameters, puts ``nosniff`` on every answer, and audits each request
    whose route authenticated a token (``request.state.principal``) and did not audit itself
    (``request.state.audited``: the downloads, which record before they stream). Answers of lookup
    routes feed the not-found watch of etl.api.throttles."""

    def __init__(
        self,
        app: ASGIApp,
        trail: AuditTrail,
        university_of_pic: dict[str, str],
        lookup_routes: Collection[str],
        record_lookup: Callable[[Any, bool], None],
    ) -> None:
        self.app = app
        self._trail = trail
        self._university_of_pic = university_of_pic
        self._lookup_routes = frozenset(lookup_routes)
        self._record_lookup = record_lookup

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Message]], send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if (name := repeated_parameter(scope.get("query_string") or b"")) is not None:
            await send_error(
                send, 422, "invalid_parameter", f"query parameter {name!r}: given more than once", name
            )
            return
        held: list[Message] = []

        async def hold(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), NOSNIFF]
                state = scope.get("state") or {}
                if state.get("principal") is None or state.get("audited"):
                    await send(message)
                else:
                    held.append(message)
            elif held:
                held.append(message)
                if not message.get("more_body", False):
                    await self._audit_then_send(scope, held, send)
                    held.clear()
            else:
                await send(message)

        await self.app(scope, receive, hold)

    async def _audit_then_send(self, scope: Scope, held: list[Message], send: Send) -> None:
        state = scope["state"]
        principal = state["principal"]
        status = held[0]["status"]
        route = getattr(scope.get("route"), "name", None) or "unknown"
        if route in self._lookup_routes and status in (200, 304, 404):
            self._record_lookup(principal, status != 404)
        client = scope.get("client")
        try:
            await self._trail.record(
                principal.token_id,
                route,
                state.get("audit_resource") or scope.get("path", ""),
                status,
                sum(len(m.get("body", b"")) for m in held[1:]),
                client[0] if client else None,
                state.get("audit_university") or self._university(scope, status),
            )
        except AuditUnavailable:
            await send_error(send, 503, "audit_unavailable", "the read could not be audited, retry later")
            return
        for message in held:
            await send(message)

    def _university(self, scope: Scope, status: int) -> str | None:
        """The university the matched path names; none when its parameters failed validation."""
        params = scope.get("path_params") or {}
        if status == 422:
            return None
        if university := params.get("university"):
            return str(university)
        if escn := params.get("escn"):
            return self._university_of_pic.get(str(escn)[-9:])
        return None
