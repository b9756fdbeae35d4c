"""Running the emulator: ``serve`` (blocking) and the command line ``main``.

``python -m etl.emulator --port P --api-key KEY:PIC [--api-key ...] [--db PATH] [fault flags]``;
without ``--db`` the state lives in memory and is gone when the emulator stops.
Every flag has an environment variable (ESC_EMULATOR_PORT, ESC_EMULATOR_HOST, ESC_EMULATOR_DB,
ESC_EMULATOR_API_KEYS as ``KEY:PIC,KEY:PIC``, and the fault variables of ``faults.py``); flags win.
Prefer ESC_EMULATOR_API_KEYS: command lines are visible to every local user. Keys are never logged.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path

from aiohttp import web

from etl.emulator.app import API, create_app
from etl.emulator.faults import FaultConfig, env_name, field_names
from etl.emulator.store import Store

log = logging.getLogger("etl.emulator")

_PIC_RE = re.compile(r"^[0-9]{9}$")


def serve(
    *,
    host: str = "127.0.0.1",
    port: int,
    api_keys: dict[str, str],
    db_path: Path | None,
    faults: FaultConfig,
    port_file: Path | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM. ``port=0`` picks a free port, written to ``port_file`` when given."""
    if not api_keys:
        raise ValueError("at least one API key is required")
    asyncio.run(_serve(host, port, api_keys, db_path, faults, port_file))


async def _serve(
    host: str,
    port: int,
    api_keys: dict[str, str],
    db_path: Path | None,
    faults: FaultConfig,
    port_file: Path | None,
) -> None:
    store = Store(db_path)
    # Short shutdown: a "timeout" fault may be sleeping in a handler; it must not delay the exit.
    runner = web.AppRunner(create_app(api_keys, store, faults), access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        site = web.TCPSite(runner, host, port, backlog=1024)
        await site.start()
        actual = runner.addresses[0][1]
        log.info(
            "ESC Router emulator on http://%s:%s%s (%d API keys for PICs %s; db %s; faults %s)",
            host,
            actual,
            API.removesuffix("/api/v2"),
            len(api_keys),
            ", ".join(sorted(set(api_keys.values()))),
            db_path or "in memory",
            faults.to_dict(),
        )
        if port_file is not None:
            tmp = port_file.with_suffix(".tmp")
            tmp.write_text(str(actual))
            tmp.replace(port_file)  # atomic: a reader never sees a half-written port
        await stop.wait()
    finally:
        await runner.cleanup()
        store.close()
        log.info("ESC Router emulator stopped")


def parse_api_keys(items: Sequence[str]) -> dict[str, str]:
    """``KEY:PIC`` items (the PIC after the last colon); errors never repeat the key."""
    keys: dict[str, str] = {}
    for i, item in enumerate(items, 1):
        key, sep, pic = item.strip().rpartition(":")
        if not sep or not key or any(c.isspace() for c in key) or not _PIC_RE.match(pic):
            raise ValueError(f"API key #{i}: expected KEY:PIC with a non-empty key and a 9-digit PIC")
        keys[key] = pic
    return keys


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="esc-sync emulator", description="ESC Router v2 emulator with fault injection"
    )
    p.add_argument("--host", help="listen address (default 127.0.0.1) [ESC_EMULATOR_HOST]")
    p.add_argument("--port", type=int, help="listen port, 0 for any free one [ESC_EMULATOR_PORT]")
    p.add_argument("--db", help="SQLite file of the emulator's state (default: in memory) [ESC_EMULATOR_DB]")
    p.add_argument(
        "--api-key",
        action="append",
        default=[],
        metavar="KEY:PIC",
        help="accepted key and its organisation's PIC; repeatable [ESC_EMULATOR_API_KEYS]",
    )
    p.add_argument("--port-file", help="write the bound port to this file once listening")
    f = p.add_argument_group("fault injection (authenticated API calls only)")
    f.add_argument("--latency-ms", help="added latency, the median when --latency-sigma > 0")
    f.add_argument("--latency-jitter-ms", help="uniform jitter ± this many ms")
    f.add_argument("--latency-sigma", help="lognormal shape of the latency (0 = fixed)")
    f.add_argument("--fail-rate", help="share of calls that get a fault, 0..1")
    f.add_argument(
        "--fault-kinds",
        help="kinds with optional weights: 500,502,503,429,timeout,drop,html (e.g. 500,503=2)",
    )
    f.add_argument("--post-commit-share", help="share of write faults that strike after the commit, 0..1")
    f.add_argument("--timeout-s", help="how long a 'timeout' fault stalls before dropping the connection")
    f.add_argument("--retry-after-s", help="Retry-After seconds of a 429")
    f.add_argument("--seed", help="random seed of latency and faults")
    f.add_argument(
        "--deny-pics",
        help="PICs whose calls answer 403 as from an address outside their allow-list (PIC,PIC)",
    )
    return p


def main(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    env = os.environ if environ is None else environ
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse already printed the usage error
        return int(e.code or 0)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        items = args.api_key or [s for s in env.get("ESC_EMULATOR_API_KEYS", "").split(",") if s.strip()]
        api_keys = parse_api_keys(items)
        if not api_keys:
            raise ValueError("at least one API key is required (--api-key KEY:PIC or ESC_EMULATOR_API_KEYS)")
        port_text = args.port if args.port is not None else env.get("ESC_EMULATOR_PORT")
        if port_text is None or port_text == "":
            raise ValueError("--port is required (or ESC_EMULATOR_PORT)")
        port = int(port_text)
        if not 0 <= port <= 65535:
            raise ValueError(f"port {port} out of range")
        db = args.db or env.get("ESC_EMULATOR_DB")
        raw = {name: env.get(env_name(name)) for name in field_names()}
        raw.update({name: getattr(args, name) for name in field_names() if getattr(args, name) is not None})
        faults = FaultConfig.from_strings(raw)
    except ValueError as e:
        parser.print_usage()
        log.error("emulator: %s", e)
        return 2
    serve(
        host=args.host or env.get("ESC_EMULATOR_HOST") or "127.0.0.1",
        port=port,
        api_keys=api_keys,
        db_path=Path(db) if db else None,
        faults=faults,
        port_file=Path(args.port_file) if args.port_file else None,
    )
    return 0
