"""Which HTTP stack should the Router client use? Requests/s and client CPU per request on loopback.

A small aiohttp server runs in a subprocess on 127.0.0.1 and answers a Router-sized JSON body (a
PersonView). Each client variant sends the same number of GETs with ``--concurrency`` in flight, in a
fresh event loop; CPU is ``time.process_time()`` of this process only (the server is another
process). Variants run interleaved for ``--rounds`` rounds and the median is printed, with ratios
against plain httpx measured in the same run (absolute figures vary between machines, ratios less).

    .venv/bin/python bench/bench_http_transport.py [--requests 2000] [--concurrency 16] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ESI = "urn:schac:personalUniqueCode:int:esi:unife.it:191275"
PERSON_VIEW = {
    "identifier": ESI,
    "identifierCode": {"key": "ESI", "label": "European Student Identifier"},
    "personOrganisationViews": [
        {
            "organisationIdentifier": "999978433",
            "fullName": "Studente Sintetico",
            "email": "studente.sintetico@example.org",
            "academicLevel": {"key": "BACHELOR", "label": "Bachelor"},
        }
    ],
}


def serve() -> None:
    """Subprocess body: answer every GET with the PersonView, print the port, run until killed."""
    from aiohttp import web

    payload = json.dumps(PERSON_VIEW).encode()

    async def handler(_request: web.Request) -> web.Response:
        return web.Response(body=payload, content_type="application/json")

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/{tail:.*}", handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=512)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        print(port, flush=True)
        await asyncio.Event().wait()

    try:
        import uvloop  # the server is not under test: keep it as cheap as possible

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())


# ---- client variants: each returns (async context manager, one-request coroutine factory) ----------

Variant = Callable[[str, int], tuple[AbstractAsyncContextManager[Any], Callable[[Any], Awaitable[None]]]]


def plain_httpx(base: str, conc: int) -> tuple[Any, Callable[[Any], Awaitable[None]]]:
    import httpx

    limits = httpx.Limits(max_connections=conc, max_keepalive_connections=conc)
    client = httpx.AsyncClient(base_url=base, limits=limits, trust_env=False)

    async def one(c: httpx.AsyncClient) -> None:
        (await c.get(f"/api/v2/persons/{ESI}")).json()

    return client, one


def httpx_aiohttp(base: str, conc: int) -> tuple[Any, Callable[[Any], Awaitable[None]]]:
    import httpx
    from httpx_aiohttp import AiohttpTransport

    limits = httpx.Limits(max_connections=conc, max_keepalive_connections=conc)
    transport = AiohttpTransport(limits=limits, trust_env=False)
    client = httpx.AsyncClient(base_url=base, limits=limits, trust_env=False, transport=transport)

    async def one(c: httpx.AsyncClient) -> None:
        (await c.get(f"/api/v2/persons/{ESI}")).json()

    return client, one


def raw_aiohttp(base: str, conc: int) -> tuple[Any, Callable[[Any], Awaitable[None]]]:
    import aiohttp

    holder: dict[str, aiohttp.ClientSession] = {}

    class Session:
        async def __aenter__(self) -> aiohttp.ClientSession:
            holder["s"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conc))
            return holder["s"]

        async def __aexit__(self, *exc: object) -> None:
            await holder["s"].close()

    async def one(s: aiohttp.ClientSession) -> None:
        async with s.get(f"{base}/api/v2/persons/{ESI}") as r:
            await r.json()

    return Session(), one


def router_client(
    base: str, conc: int, transport: str = "default"
) -> tuple[Any, Callable[[Any], Awaitable[None]]]:
    import httpx

    from etl.resources.router import RouterClient

    tr = httpx.AsyncHTTPTransport() if transport == "httpcore" else None
    client = RouterClient(
        base, "bench-key", "bench", "999978433", "BENCH_KEY", concurrency=conc, transport=tr
    )

    async def one(c: RouterClient) -> None:
        await c.get_person(ESI)

    return client, one


@dataclass
class Result:
    rps: float
    cpu_ms: float


async def drive(variant: Variant, base: str, requests: int, conc: int) -> Result:
    cm, one = variant(base, conc)
    async with cm as client:
        for _ in range(conc * 2):  # warm the pool
            await one(client)
        remaining = requests

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                await one(client)

        cpu0, t0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(conc)))
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return Result(rps=requests / wall, cpu_ms=cpu / requests * 1000)


def run_variant(name: str, variant: Variant, base: str, requests: int, conc: int) -> Result:
    if name.endswith("(uvloop)"):
        import uvloop

        return uvloop.run(drive(variant, base, requests, conc))
    return asyncio.run(drive(variant, base, requests, conc))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve()
        return

    variants: dict[str, Variant] = {
        "httpx AsyncClient (httpcore pool)": plain_httpx,
        "httpx + httpx-aiohttp transport": httpx_aiohttp,
        "httpx + httpx-aiohttp (uvloop)": httpx_aiohttp,
        "aiohttp ClientSession (floor)": raw_aiohttp,
        "RouterClient, default transport": router_client,
        "RouterClient, httpcore transport": lambda b, c: router_client(b, c, "httpcore"),
    }
    try:
        import uvloop  # noqa: F401
    except ImportError:
        variants.pop("httpx + httpx-aiohttp (uvloop)")

    server = subprocess.Popen(
        [sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert server.stdout is not None
        base = f"http://127.0.0.1:{int(server.stdout.readline())}/esc-rest"
        results: dict[str, list[Result]] = {name: [] for name in variants}
        for _ in range(args.rounds):
            for name, variant in variants.items():
                results[name].append(run_variant(name, variant, base, args.requests, args.concurrency))
    finally:
        server.terminate()
        server.wait(timeout=10)

    med = {
        n: Result(statistics.median(r.rps for r in rs), statistics.median(r.cpu_ms for r in rs))
        for n, rs in results.items()
    }
    ref = med["httpx AsyncClient (httpcore pool)"]
    print(
        f"{args.requests} GETs x {args.rounds} rounds, concurrency {args.concurrency}, "
        f"loopback aiohttp server in a subprocess; medians; ratios vs plain httpx in this run"
    )
    print(f"{'client':36} {'req/s':>8} {'CPU ms/req':>11} {'req/s ratio':>12} {'CPU ratio':>10}")
    for name, r in med.items():
        print(
            f"{name:36} {r.rps:8.0f} {r.cpu_ms:11.3f} {r.rps / ref.rps:11.2f}x {r.cpu_ms / ref.cpu_ms:9.2f}x"
        )


if __name__ == "__main__":
    main()
