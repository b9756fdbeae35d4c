"""`esc-sync demo`: from nothing to every partition of both demo universities materialised through
Dagster, then a summary. Idempotent: a second run finds nothing to do; `--mutate` applies a batch of
Esse3 activity and syncs only the partitions that changed."""

from __future__ import annotations

import datetime as dt
import os
import secrets
import sys
from dataclasses import replace
from pathlib import Path

from sqlalchemy import select

from etl.api.tokens import create_token, list_tokens, revoke_token
from etl.changes import pending_partitions
from etl.config import Settings, home_from_env, load_settings
from etl.definitions import build_definitions
from etl.demo import config as demo
from etl.demo.generate import generate, is_generated
from etl.demo.mutate import mutate
from etl.domain.states import CardStatus, SyncState
from etl.emulator import EmulatorProcess, start_emulator
from etl.orchestrate import Backfill, ensure_instance, run_partitions
from etl.report import failures, progress, say, summary
from etl.resources.runtime import Runtime
from etl.store.db import check_reachable
from etl.store.migrate import upgrade
from etl.store.models import Card


def prepare(home: Path, students: int) -> Settings:
    """Home, config, demo Esse3 databases and the migrated state DB."""
    home.mkdir(parents=True, exist_ok=True)
    config_path = Path(os.environ.get("ESC_SYNC_CONFIG") or home / "esc-sync.toml")
    if not config_path.exists():
        config_path.write_text(demo.demo_config_toml(), encoding="utf-8")
        say(f"wrote demo configuration {config_path}")
    now = dt.datetime.now().replace(microsecond=0)
    for a in demo.DEMO_ATENEI:
        url = f"sqlite:///{demo.esse3_path(home, a.code)}"
        if not is_generated(url):
            stats = generate(
                url,
                seed=a.seed,
                students=students // len(demo.DEMO_ATENEI),
                first_year=demo.FIRST_YEAR,
                last_year=demo.LAST_YEAR,
                now=now,
                matricola_base=a.matricola_base,
                email_domain=f"studenti.{a.domain}",
            )
            bad = sum(len(v) for v in stats.bad.values())
            say(
                f"generated demo Esse3 for {a.code}: {stats.careers} careers, "
                f"{stats.badges} badges, {bad} bad rows"
            )
    settings = load_settings(config_path)
    runtime = Runtime(settings)
    check_reachable(runtime.engine)
    upgrade(runtime.engine)
    runtime.dispose()
    return settings


def demo_router(settings: Settings, home: Path) -> EmulatorProcess:
    """The Router emulator on a free loopback port, its state in the home. Demo keys are random per
    run and live only in this process's environment (never in a file or a log)."""
    keys = {}
    for a in settings.atenei:
        os.environ.setdefault(a.router_api_key_env, "demo_" + secrets.token_urlsafe(24))
        keys[os.environ[a.router_api_key_env]] = a.pic
    return start_emulator(keys, home / "router-emulator.sqlite")


def rest_instructions(settings: Settings, port: int = 8000) -> str:
    """Fresh demo tokens (earlier demo tokens are revoked: only hashes are stored, so a token can only
    be shown when it is created) and ready-to-paste calls against the REST service."""
    runtime = Runtime(settings)
    try:
        for t in list_tokens(runtime.engine):
            if t.name.startswith("demo ") and t.revoked_at is None:
                revoke_token(runtime.engine, t.id)
        codes = settings.codes
        vendor = create_token(
            runtime.engine,
            name="demo vendor",
            scopes=["exports:read"],
            institutions=codes,
            known_institutions=codes,
        )
        app = create_token(
            runtime.engine,
            name="demo app backend",
            scopes=["badges:read"],
            institutions=codes,
            known_institutions=codes,
        )
        with runtime.engine.connect() as conn:
            card = conn.execute(
                select(Card.escn)
                .where(Card.state == SyncState.REGISTERED, Card.desired_status == CardStatus.ACTIVE)
                .limit(1)
            ).scalar()
    finally:
        runtime.dispose()
    base = f"http://127.0.0.1:{port}"
    lines = [
        "\nREST service (vendors and badge consumers):",
        f"  .venv/bin/esc-sync api --port {port}      # OpenAPI: {base}/docs",
        f'  curl -H "Authorization: Bearer {vendor.token}" "{base}/v1/exports?university={codes[0]}"',
        f'  curl -H "Authorization: Bearer {vendor.token}" "{base}/v1/feed?university={codes[0]}&limit=5"',
    ]
    if card:
        lines.append(f'  curl -H "Authorization: Bearer {app.token}" "{base}/v1/cards/{card}/badge.json"')
        lines.append(f"  (badge page: {base}/v1/cards/{card}/badge.html with the same header)")
    lines.append("  demo tokens are shown once; new ones replace them at every demo run")
    return "\n".join(lines)


def show_replacement(runtime: Runtime, replaced: dict[str, list[tuple[int, int]]]) -> None:
    """One annulled badge and its replacement as Esse3 now shows them (keys and card numbers only)."""
    for code, pairs in replaced.items():
        if pairs and runtime.settings.ateneo(code).write_back_badge:
            old, new = pairs[0]
            cards = runtime.esse3(code).badge_cards([old, new])
            old_escn, old_status = cards.get(old, (None, None))
            new_escn, new_status = cards.get(new, (None, None))
            say(
                f"\nIn {code}'s Esse3, annulled badge {old} carries ESCN {old_escn} ({old_status}); "
                f"its replacement, badge {new}, carries ESCN {new_escn} ({new_status})"
            )
            return


def run_demo(*, mutate_batch: bool = False, students: int = 5000, size: int = 60) -> int:
    home = home_from_env()
    say(f"esc-sync demo in {home}")
    settings = prepare(home, students)
    emulator = demo_router(settings, home)
    say(f"ESC Router emulator on {emulator.url}")
    settings = replace(settings, router=replace(settings.router, url=emulator.url))
    runtime = Runtime(settings)
    replaced: dict[str, list[tuple[int, int]]] = {}  # university → (annulled, replacement) BDG_IDs
    try:
        if mutate_batch:
            now = dt.datetime.now().replace(microsecond=0)
            for i, a in enumerate(demo.DEMO_ATENEI):
                stats = mutate(
                    runtime.esse3(a.code).engine.url.render_as_string(hide_password=False),
                    seed=now.second + i,
                    now=now,
                    size=size,
                )
                say(f"mutated demo Esse3 of {a.code}: years touched {sorted(stats.touched_years)}")
                replaced[a.code] = stats.replacements
        todo = [c.partition for c in pending_partitions(settings, runtime)]
        backfill = Backfill([], [])
        if not todo:
            say("Nothing changed in Esse3 since the last sync: nothing to run.")
        else:
            say(f"Materialising {len(todo)} partition(s) through Dagster:")
            defs = build_definitions(settings, runtime)
            backfill = run_partitions(
                defs,
                ensure_instance(settings),
                todo,
                progress=progress,
                say=say,
                wait_timeout_s=settings.run_wait_timeout_s,
                lock_engine=runtime.engine,
            )
        summary(settings, runtime, emulator.stats()["organisations"])
        show_replacement(runtime, replaced)
    finally:
        runtime.dispose()
        emulator.stop()
    say(rest_instructions(settings))
    say(
        "\nNext:\n"
        f"  esc-sync ui                      # Dagster UI on http://127.0.0.1:3000 (assets, runs, checks)\n"
        f"  esc-sync demo --mutate           # simulate Esse3 activity, sync only what changed\n"
        f"  esc-sync materialize --institution unife --years 2019-2020   # a CLI backfill\n"
        f"  (home: {home}; set ESC_SYNC_HOME to use another)"
    )
    sys.stdout.flush()
    return failures(backfill)
