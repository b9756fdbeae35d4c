"""Every authenticated read leaves an ``api_audit`` row: token, university, what, status, bytes, when.

The request path only appends a dict to a list (microseconds); a thread writes the rows in one
``executemany`` every ``flush_s`` seconds or as soon as ``max_batch`` wait, so auditing every badge,
QR and feed read costs the hot path nothing measurable (bench/bench_api.py). Rows are kept if the
database is briefly unreachable and written with the next batch (at most ``max_pending`` are held;
beyond that the oldest are counted as lost and logged as a count, never their content).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from sqlalchemy import Engine, insert
from sqlalchemy.exc import SQLAlchemyError

from etl.store.models import ApiAudit, utcnow

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[
    [Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]
]


class AuditTrail:
    def __init__(
        self, engine: Engine, *, flush_s: float = 0.5, max_batch: int = 500, max_pending: int = 100_000
    ) -> None:
        self._engine = engine
        self._flush_s = flush_s
        self._max_batch = max_batch
        self._max_pending = max_pending
        self._rows: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = False
        self.lost = 0
        self._thread = threading.Thread(target=self._run, name="api-audit", daemon=True)
        self._thread.start()

    def add(
        self,
        token_id: int,
        action: str,
        resource: str,
        status: int,
        nbytes: int = 0,
        client: str | None = None,
        institution: str | None = None,
    ) -> None:
        row = {
            "token_id": token_id, "at": utcnow(), "action": action[:32], "resource": resource[:200],
            "status": status, "bytes": nbytes, "client": client[:64] if client else None,
            "institution": institution,
        }  # fmt: skip
        with self._lock:
            self._rows.append(row)
            if len(self._rows) > self._max_pending:
                drop = len(self._rows) - self._max_pending
                del self._rows[:drop]
                self.lost += drop
            full = len(self._rows) >= self._max_batch
        if full:
            self._wake.set()

    def flush(self) -> int:
        with self._lock:
            rows, self._rows = self._rows, []
        if not rows:
            return 0
        try:
            with self._engine.begin() as conn:
                conn.execute(insert(ApiAudit), rows)
        except SQLAlchemyError as e:
            log.error(
                "api audit: %d rows not written yet (%s); retried with the next batch",
                len(rows),
                type(e).__name__,
            )
            with self._lock:
                self._rows[:0] = rows
            return 0
        return len(rows)

    def _run(self) -> None:
        while not self._stop:
            self._wake.wait(self._flush_s)
            self._wake.clear()
            self.flush()

    def close(self) -> None:
        self._stop = True
        self._wake.set()
        self._thread.join(timeout=10)
        self.flush()
        if self.lost:
            log.error("api audit: %d rows were lost (the database stayed unreachable)", self.lost)


class AuditMiddleware:
    """Audits each request whose route authenticated a token (``request.state.principal``) and did not
    audit itself (``request.state.audited``, the downloads, which count the bytes they stream)."""

    def __init__(self, app: ASGIApp, trail: AuditTrail, university_of_pic: dict[str, str]) -> None:
        self.app = app
        self._trail = trail
        self._university_of_pic = university_of_pic

    async def __call__(
        self,
        scope: Scope,
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status, sent = 500, 0

        async def capture(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            state = scope.get("state") or {}
            principal = state.get("principal")
            if principal is not None and not state.get("audited"):
                route = scope.get("route")
                client = scope.get("client")
                self._trail.add(
                    principal.token_id,
                    getattr(route, "name", None) or "unknown",
                    scope.get("path", ""),
                    status,
                    sent,
                    client[0] if client else None,
                    self._university(scope),
                )

    def _university(self, scope: Scope) -> str | None:
        params = scope.get("path_params") or {}
        if university := params.get("university"):
            return str(university)
        if escn := params.get("escn"):
            return self._university_of_pic.get(str(escn)[-9:])
        for part in (scope.get("query_string") or b"").decode("latin-1").split("&"):
            key, _, value = part.partition("=")
            if key == "university" and value:
                return value[:32]
        return None
