"""``esc-sync api`` (run the REST service) and ``esc-sync tokens create|list|revoke``.

``register(subparsers)`` adds both commands to the main parser; ``dispatch(args, settings)`` runs them.
``python -m etl.api.cli ...`` works standalone too (the benchmark starts the server that way).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Sequence

from sqlalchemy import Engine

from etl.api.tokens import (
    DEFAULT_RATE_PER_MINUTE,
    SCOPES,
    TokenInfo,
    create_token,
    list_tokens,
    parse_expiry,
    revoke_token,
)
from etl.config import Settings
from etl.errors import EscSyncError
from etl.store.models import utcnow

COMMANDS = ("api", "tokens")


def register(subparsers: argparse._SubParsersAction) -> None:
    a = subparsers.add_parser("api", help="run the REST service (OpenAPI docs at /docs)")
    a.add_argument("--port", type=int, default=8000)
    a.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1; put a TLS proxy in front")
    a.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])

    t = subparsers.add_parser("tokens", help="manage REST API bearer tokens")
    tsub = t.add_subparsers(dest="tokens_action", required=True)
    c = tsub.add_parser("create", help="create a token and print it (once: only its hash is kept)")
    c.add_argument("--name", required=True, help="who holds it, e.g. the vendor's name")
    c.add_argument("--scope", action="append", default=[], choices=SCOPES, help="repeatable")
    c.add_argument("--institution", action="append", default=[], help="university code (repeatable)")
    c.add_argument("--rate-per-minute", type=int, default=DEFAULT_RATE_PER_MINUTE)
    c.add_argument(
        "--matricola-rate-per-minute",
        type=int,
        default=None,
        help="lookups by matricola a minute (default [api] matricola_rate_per_minute; 0: by ESCN only)",
    )
    c.add_argument(
        "--expires", default=None, help="90d, 2027-06-30 or never (default: [api] token_days from now)"
    )
    tsub.add_parser("list", help="list tokens (never the tokens themselves)")
    r = tsub.add_parser("revoke", help="revoke a token by id")
    r.add_argument("id", type=int)


def dispatch(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "api":
        return run_api(settings, args.host, args.port, args.log_level)
    if args.command == "tokens":
        return run_tokens(args, settings)
    raise EscSyncError(f"unknown command {args.command!r}")


def _state_engine(settings: Settings) -> Engine:
    from etl.store import migrate
    from etl.store.db import check_reachable, make_engine

    engine = make_engine(settings.database_url)
    try:
        check_reachable(engine)
        if migrate.current_revision(engine) != migrate.head_revision():
            raise EscSyncError("state DB is not migrated to the latest revision: run `esc-sync db upgrade`")
    except BaseException:
        engine.dispose()
        raise
    return engine


def run_api(settings: Settings, host: str, port: int, log_level: str = "info") -> int:
    import uvicorn

    from etl.api.app import create_app

    if not 1 <= port <= 65535:
        raise EscSyncError(f"api: --port {port} is not a TCP port")
    engine = _state_engine(settings)
    try:
        # Links in answers: [api] public_url (the address vendors use, e.g. behind a TLS proxy), else
        # the address served here.
        public = settings.api_public_url or f"http://{host}:{port}/"
        app = create_app(settings, engine, public_url=public)
        print(
            f"esc-sync API on http://{host}:{port} (docs: http://{host}:{port}/docs; links: {public})",
            flush=True,
        )
        # No access log: paths carry matricole and ESCNs. Downloads are audited in api_audit instead.
        # X-Forwarded-For is read by the app, from [api] trusted_proxies only (uvicorn's own reading
        # would trust any process on this machine).
        uvicorn.run(
            app, host=host, port=port, log_level=log_level, access_log=False, server_header=False,
            proxy_headers=False,
        )  # fmt: skip
    finally:
        engine.dispose()
    return 0


def run_tokens(args: argparse.Namespace, settings: Settings) -> int:
    engine = _state_engine(settings)
    try:
        if args.tokens_action == "create":
            new = create_token(
                engine,
                name=args.name,
                scopes=args.scope,
                institutions=args.institution,
                known_institutions=settings.codes,
                rate_per_minute=args.rate_per_minute,
                matricola_rate_per_minute=(
                    settings.api.matricola_rate_per_minute
                    if args.matricola_rate_per_minute is None
                    else args.matricola_rate_per_minute
                ),
                expires_at=parse_expiry(args.expires, utcnow(), settings.api.token_days),
            )
            print(
                f"token {new.id} ({new.name}): scopes {' '.join(new.scopes)}; universities "
                f"{' '.join(new.institutions)}; {new.rate_per_minute} requests/minute, "
                f"{new.matricola_rate_per_minute} by matricola; expires {_expiry(new.expires_at)}. "
                "Store it now, it is not shown again:",
                file=sys.stderr,
            )
            print(new.token)  # alone on stdout, so `TOKEN=$(esc-sync tokens create ...)` works
        elif args.tokens_action == "list":
            print(format_token_table(list_tokens(engine)))
        elif args.tokens_action == "revoke":
            info, changed = revoke_token(engine, args.id)
            when = _when(info.revoked_at)
            print(
                f"token {info.id} ({info.name}) {'revoked' if changed else 'was already revoked'} at {when}"
            )
    finally:
        engine.dispose()
    return 0


def _when(value: dt.datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%SZ") if value else "-"


def _expiry(value: dt.datetime | None) -> str:
    return _when(value) if value else "never"


def format_token_table(tokens: Sequence[TokenInfo]) -> str:
    header = (
        *("ID", "NAME", "PREFIX", "SCOPES", "UNIVERSITIES", "RATE/MIN", "MATRICOLA/MIN"),
        *("CREATED", "EXPIRES", "LAST USED", "REVOKED"),
    )
    rows = [
        (
            str(t.id),
            t.name,
            t.prefix + "…",
            ",".join(t.scopes),
            ",".join(t.institutions),
            str(t.rate_per_minute),
            str(t.matricola_rate_per_minute),
            _when(t.created_at),
            _expiry(t.expires_at),
            _when(t.last_used_at),
            _when(t.revoked_at),
        )
        for t in tokens
    ]
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in (header, *rows)]
    return "\n".join(lines) if rows else "\n".join([*lines, "(no tokens)"])


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry point with the settings of the environment (as ``esc-sync``)."""
    from etl.config import load_settings

    parser = argparse.ArgumentParser(prog="python -m etl.api.cli")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return dispatch(args, load_settings())
    except EscSyncError as e:
        print(f"esc-sync: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
