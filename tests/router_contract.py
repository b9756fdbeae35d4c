"""The ESC Router's own OpenAPI document as a checker, independent of the emulator and the client.

``RouterContract`` matches a request to the document's operation and validates the request (JSON body,
required and typed query parameters) and the answer (status documented, JSON body against the
response schema) with jsonschema (draft 2020-12, as in OpenAPI 3.1), on the document made strict
(``strict``: no field beyond the documented ones). Problems name the operation and
the schema location, never values (bodies carry personal data).

The document is read from ``../shared/reference/`` when it is beside the checkout (CI), otherwise from
the copy the emulator ships (``etl/emulator/esc-router-v2.openapi.json``); a test keeps them equal.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema_rs
from aiohttp import web

REPO = Path(__file__).resolve().parents[1]
SHARED_DOCUMENT = REPO.parent / "shared" / "reference" / "esc-router-v2.openapi.json"
PACKAGED_DOCUMENT = REPO / "etl" / "emulator" / "esc-router-v2.openapi.json"


def load_document() -> dict[str, Any]:
    path = SHARED_DOCUMENT if SHARED_DOCUMENT.exists() else PACKAGED_DOCUMENT
    return json.loads(path.read_text(encoding="utf-8"))


def strict(document: dict[str, Any]) -> dict[str, Any]:
    """The document with ``additionalProperties: false`` on every object schema that lists its
    properties: the Router answers and takes exactly the documented fields, so a field one side
    invents (a flat ``issuerIdentifier`` in a CardView, say) is a violation, not an extra."""
    doc = copy.deepcopy(document)

    def close(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node:
                node.setdefault("additionalProperties", False)
            for value in node.values():
                close(value)
        elif isinstance(node, list):
            for value in node:
                close(value)

    close(doc["components"]["schemas"])
    return doc


@dataclass(frozen=True)
class Operation:
    method: str
    template: str
    pattern: re.Pattern[str]
    spec: dict[str, Any]

    @property
    def name(self) -> str:
        return f"{self.method} {self.template}"


class RouterContract:
    def __init__(self, document: dict[str, Any] | None = None) -> None:
        self.document = strict(document or load_document())
        self.base = self.document["servers"][0]["url"].rstrip("/")  # "/esc-rest"
        self._validators: dict[str, Any] = {}
        ops = []
        for template, item in self.document["paths"].items():
            regex = re.escape(template)
            regex = re.sub(r"\\\{[^}]+\\\}", "[^/]+", regex)
            for method, spec in item.items():
                ops.append(Operation(method.upper(), template, re.compile(f"^{regex}$"), spec))
        # Fixed paths before templated ones ("/cards/generate-escn" is not "/cards/{escn}").
        self.operations = sorted(ops, key=lambda o: o.template.count("{"))

    def operation(self, method: str, path: str) -> Operation | None:
        path = path.removeprefix(self.base)
        for op in self.operations:
            if op.method == method.upper() and op.pattern.match(path):
                return op
        return None

    def _validator(self, schema: dict[str, Any]) -> Any:
        key = json.dumps(schema, sort_keys=True)
        v = self._validators.get(key)
        if v is None:
            root = {**schema, "components": self.document["components"]}
            v = self._validators[key] = jsonschema_rs.Draft202012Validator(root)
        return v

    def _schema_problems(self, where: str, schema: dict[str, Any], value: Any) -> list[str]:
        return [
            f"{where}: {type(e.kind).__name__} at {list(e.instance_path)} (schema {list(e.schema_path)})"
            for e in self._validator(schema).iter_errors(value)
        ]

    def check_request(
        self, method: str, path: str, query: dict[str, str], content_type: str, body: bytes
    ) -> list[str]:
        op = self.operation(method, path)
        if op is None:
            return [f"{method} {path.split('/api/v2/')[-1].split('/')[0]}…: not in the document"]
        problems = []
        for p in op.spec.get("parameters", []):
            if p["in"] != "query":
                continue
            value = query.get(p["name"])
            if value is None:
                if p.get("required"):
                    problems.append(f"{op.name}: query parameter {p['name']} is required")
                continue
            schema = p.get("schema", {})
            if schema.get("type") == "integer" and not re.fullmatch(r"-?\d+", value):
                problems.append(f"{op.name}: query parameter {p['name']} is not an integer")
            if "enum" in schema and value not in schema["enum"]:
                problems.append(f"{op.name}: query parameter {p['name']} is not one of {schema['enum']}")
        content = op.spec.get("requestBody", {}).get("content", {})
        if "application/json" in content:
            if not content_type.startswith("application/json"):
                problems.append(f"{op.name}: body is not application/json")
            else:
                try:
                    value = json.loads(body)
                except ValueError:
                    return [*problems, f"{op.name}: body is not JSON"]
                schema = content["application/json"]["schema"]
                problems += self._schema_problems(f"{op.name} request", schema, value)
        elif body and not content:
            problems.append(f"{op.name}: sends a body the operation does not take")
        return problems

    def check_response(
        self, method: str, path: str, status: int, content_type: str, body: bytes
    ) -> list[str]:
        op = self.operation(method, path)
        if op is None:
            return []
        responses = op.spec.get("responses", {})
        documented = responses.get(str(status))
        if documented is None:
            return [f"{op.name}: answered {status}, not documented ({', '.join(responses)})"]
        if status == 204 or not body:
            return []
        media = content_type.split(";")[0].strip()
        content = documented.get("content", {})
        if media != "application/json":
            return [] if media in content or "*/*" in content else [f"{op.name}: {status} as {media}"]
        schema = (content.get("application/json") or content.get("*/*") or {}).get("schema")
        if schema is None:
            return [f"{op.name}: {status} answered JSON, the document has none"]
        try:
            value = json.loads(body)
        except ValueError:
            return [f"{op.name}: {status} body is not JSON"]
        return self._schema_problems(f"{op.name} {status}", schema, value)


_HOP = {"host", "content-length", "transfer-encoding", "connection", "server", "date"}


class ContractProxy:
    """A reverse proxy on loopback between a client and a Router (the emulator) that checks every
    request and every answer against the document as they pass: what neither side can vouch for.
    Runs its own event loop in a thread; ``problems`` and ``calls`` count by operation."""

    def __init__(self, upstream: str, contract: RouterContract | None = None) -> None:
        self.upstream = upstream.rstrip("/")  # e.g. http://127.0.0.1:P/esc-rest
        self.contract = contract or RouterContract()
        self.calls: Counter[str] = Counter()
        self.problems: Counter[str] = Counter()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.contract.base}"

    def __enter__(self) -> ContractProxy:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("contract proxy did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        session = aiohttp.ClientSession(auto_decompress=False)
        upstream_root = self.upstream.removesuffix(self.contract.base)

        async def forward(request: web.Request) -> web.StreamResponse:
            body = await request.read()
            method, path = request.method, request.path
            op = self.contract.operation(method, path)
            self.calls[op.name if op else f"{method} ?"] += 1
            query = {k: v for k, v in request.query.items()}
            for p in self.contract.check_request(
                method, path, query, request.headers.get("Content-Type", ""), body
            ):
                self.problems[p] += 1
            headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
            async with session.request(
                method, upstream_root + request.raw_path, headers=headers, data=body, allow_redirects=False
            ) as up:
                content = await up.read()
                ctype = up.headers.get("Content-Type", "")
                for p in self.contract.check_response(method, path, up.status, ctype, content):
                    self.problems[p] += 1
                out = web.Response(status=up.status, body=content)
                for k, v in up.headers.items():
                    if k.lower() not in _HOP:
                        out.headers[k] = v
                return out

        app = web.Application(client_max_size=1 << 24)
        app.router.add_route("*", "/{tail:.*}", forward)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.port = runner.addresses[0][1]
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()
        await session.close()
