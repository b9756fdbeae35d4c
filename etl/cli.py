"""`esc-sync` command line. Operator errors end with one line on stderr and an exit code that names
their kind (``etl.errors.ExitCode``), never a traceback (set ESC_SYNC_DEBUG=1 to see one)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.exc import OperationalError

from etl.api.cli import COMMANDS as API_COMMANDS
from etl.api.cli import dispatch as api_dispatch
from etl.api.cli import register as register_api
from etl.errors import EscSyncError, ExitCode
from etl.store.db import database_reason

if TYPE_CHECKING:
    from etl.config import Settings
    from etl.resources.runtime import Runtime


def _years(text: str) -> list[int]:
    first, _, last = text.partition("-")
    try:
        return list(range(int(first), int(last or first) + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a year or a range like 2019-2021") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="esc-sync", description="Esse3/SIS → European Student Card Router integration (Dagster)."
    )
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="set up the embedded default and run the whole chain")
    d.add_argument("--mutate", action="store_true", help="apply a batch of Esse3 activity, sync what changed")
    d.add_argument("--students", type=int, default=5000, help="careers in the demo Esse3 (first run only)")

    db = sub.add_parser("db", help="state DB migrations")
    db.add_argument("action", choices=["upgrade", "downgrade", "current"])
    db.add_argument("revision", nargs="?", default=None)

    sub.add_parser("config", help="validate the configuration and print a summary")

    m = sub.add_parser("materialize", help="backfill partitions through Dagster (in-process)")
    m.add_argument("--partition", action="append", default=[], help="e.g. 2019|unife (repeatable)")
    m.add_argument("--institution", action="append", default=[], help="university code (repeatable)")
    m.add_argument("--years", type=_years, help="academic year or range, e.g. 2019-2021")

    sub.add_parser("sync", help="run the partitions whose Esse3 data changed (what the sensor does)")
    rc = sub.add_parser("reconcile", help="compare the Router with the state DB; --repair what has a rule")
    rc.add_argument("--institution", action="append", default=[], help="university code (repeatable)")
    rc.add_argument("--repair", action="store_true", help="requeue / record the drift, run its partitions")
    rc.add_argument(
        "--confirm-vanished",
        action="store_true",
        help="with --repair: apply the mass deletions the guard held (after a person has looked)",
    )
    sub.add_parser("status", help="per partition: careers, finalised, quarantined")
    er = sub.add_parser("erase", help="erase one person's data at the Router and here (GDPR art. 17)")
    er.add_argument("--institution", required=True, help="university code")
    er.add_argument("--pers-id", type=int, required=True, help="the person's Esse3 PERS_ID")
    er.add_argument("--dry-run", action="store_true", help="say what would be erased, change nothing")
    er.add_argument(
        "--esse3", action="store_true", help="also take back the ESI and cards esc-sync wrote in Esse3"
    )
    rt = sub.add_parser("retention", help="erase whose cards ended [retention] days ago; old audit rows")
    rt.add_argument("--dry-run", action="store_true", help="count who is due, change nothing")

    ui = sub.add_parser("ui", help="start the Dagster UI (dagster dev -w workspace.yaml)")
    ui.add_argument("--port", type=int, default=3000)

    register_api(sub)  # `api` and `tokens`

    dep = sub.add_parser("deploy", help="production: write the Dagster instance (PostgreSQL, run queue)")
    dep.add_argument("action", choices=["init"])
    sv = sub.add_parser("serve", help="production: run Dagster's webserver and daemon, supervised")
    sv.add_argument(
        "--host",
        default=None,
        help="address to serve on (default 127.0.0.1: Dagster's UI has no login, see README Production)",
    )
    sv.add_argument(
        "--read-only", action="store_true", help="the UI shows runs and assets but cannot change anything"
    )
    sv.add_argument("--port", type=int, default=None, help="port (default 3000)")
    sv.add_argument(
        "--check",
        action="store_true",
        help="health of a running serve (the address it recorded, or --host/--port): exit 0 if healthy",
    )
    w = sub.add_parser("worker", help="production: a Celery worker executing steps")
    w.add_argument("--name", default=f"esc-sync-{os.getpid()}", help="the worker's name (unique per host)")

    # Listed for --help; its arguments are the emulator's own (`esc-sync emulator --help`).
    sub.add_parser("emulator", help="run the ESC Router emulator (--port P --api-key KEY:PIC ...)")
    return p


INTERRUPTED = (
    "esc-sync: interrupted: the partition in progress rolled back its open transaction (calls already "
    "recorded are resumed, never repeated); re-run to finish"
)


def main(argv: list[str] | None = None) -> int:
    os.umask(0o077)  # every file esc-sync (and the Dagster it starts) writes is private: 0600 / 0700
    # A connection closed while an interrupt unwinds logs a traceback from the pool, and psycopg warns
    # again about cleaning up a connection the server dropped: the one line below says what happened.
    logging.getLogger("sqlalchemy.pool").setLevel(logging.CRITICAL)
    logging.getLogger("psycopg").setLevel(logging.ERROR)
    # An interrupt landing inside a socket write makes asyncio log "Fatal write error" with a traceback.
    logging.getLogger("asyncio").addFilter(_not_an_interrupt)
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["emulator"]:
        from etl.emulator import main as emulator_main

        return emulator_main(argv[1:])
    args = build_parser().parse_args(argv)
    # Commands that run partitions stop on SIGTERM as on Ctrl-C; servers (api, ui) keep their own.
    running = ("materialize", "sync", "reconcile", "demo")
    stops = _stop_signals() if args.command in running else nullcontext(_never)
    with stops as terminated:
        try:
            return _run(args)
        except BaseException as e:
            if not _is_interrupt(e):
                raise
            if os.environ.get("ESC_SYNC_DEBUG"):
                raise
            print(INTERRUPTED, file=sys.stderr)
            return ExitCode.TERMINATED if terminated() else ExitCode.INTERRUPTED


def _is_interrupt(e: BaseException) -> bool:
    """SIGINT, or SIGTERM (Dagster turns it into its own interrupt while a run executes), also when
    it lands while Router calls run concurrently and comes wrapped in their task group's exceptions."""
    if isinstance(e, BaseExceptionGroup):
        return any(_is_interrupt(inner) for inner in e.exceptions)
    return isinstance(e, KeyboardInterrupt) or type(e).__name__ == "DagsterExecutionInterruptedError"


def _not_an_interrupt(record: logging.LogRecord) -> bool:
    return not (record.exc_info and record.exc_info[1] is not None and _is_interrupt(record.exc_info[1]))


@contextmanager
def _stop_signals() -> Iterator[Callable[[], bool]]:
    """SIGTERM stops like Ctrl-C; yields a check: was it SIGTERM? While a run executes Dagster handles
    SIGTERM as SIGINT, but Python writes the number of every signal it handles to a wakeup fd."""
    read_fd, write_fd = os.pipe()
    previous_handler = signal.getsignal(signal.SIGTERM)
    previous_fd = None
    try:
        os.set_blocking(read_fd, False)
        os.set_blocking(write_fd, False)
        previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, signal.default_int_handler)

        def terminated() -> bool:
            try:
                return signal.SIGTERM in os.read(read_fd, 4096)
            except BlockingIOError:
                return False

        yield terminated
    finally:
        if previous_fd is not None:
            signal.set_wakeup_fd(previous_fd)
        signal.signal(signal.SIGTERM, previous_handler)
        os.close(read_fd)
        os.close(write_fd)


def _never() -> bool:
    return False


def _run(args: argparse.Namespace) -> int:
    try:
        return _dispatch(args)
    except EscSyncError as e:
        print(f"esc-sync: {e}", file=sys.stderr)
        return e.exit_code
    except OperationalError as e:
        if os.environ.get("ESC_SYNC_DEBUG"):
            raise
        print(f"esc-sync: database error: {database_reason(e)}", file=sys.stderr)
        return ExitCode.DATABASE
    except (
        OSError
    ) as e:  # disk full, permission denied, a closed pipe outside a partition (demo setup, status)
        if os.environ.get("ESC_SYNC_DEBUG") or not e.errno:
            raise
        where = f" on {e.filename}" if e.filename else ""
        print(f"esc-sync: {os.strerror(e.errno)}{where}", file=sys.stderr)
        return ExitCode.FILES


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "demo":
        from etl.demo.run import run_demo

        return run_demo(mutate_batch=args.mutate, students=args.students)
    from etl.config import load_settings
    from etl.deploy.env import DAGSTER_PG_ENV, dagster_pg_url

    settings = load_settings()
    if os.environ.get(DAGSTER_PG_ENV):  # a deployment's instance, in this process and its children
        os.environ[DAGSTER_PG_ENV] = dagster_pg_url()
    if args.command in API_COMMANDS:
        return api_dispatch(args, settings)
    if args.command == "config":
        return _print_config(settings)
    if args.command in ("deploy", "serve", "worker"):
        from etl.deploy import processes

        if args.command == "deploy":
            return processes.init(settings)
        if args.command == "worker":
            return processes.worker(settings, args.name)
        if args.check:
            return processes.check(settings, args.host, args.port)
        return processes.serve(
            settings, args.host or "127.0.0.1", args.port or 3000, read_only=args.read_only
        )
    if args.command == "ui":
        env = {
            **os.environ,
            "ESC_SYNC_HOME": str(settings.home),
            "ESC_SYNC_CONFIG": str(settings.config_path),
        }
        from etl.deploy.instance import write_workspace
        from etl.orchestrate import ensure_instance

        ensure_instance(settings)
        env["DAGSTER_HOME"] = os.environ["DAGSTER_HOME"]
        workspace = write_workspace(Path(env["DAGSTER_HOME"]))  # the installed package, wherever it is
        dagster = str(Path(sys.executable).with_name("dagster"))  # the venv's, activated or not
        cmd = [dagster, "dev", "-w", str(workspace), "-p", str(args.port)]
        return subprocess.call(cmd, env=env, cwd=settings.home)

    from etl.resources.runtime import Runtime
    from etl.store.db import check_reachable

    runtime = Runtime(settings)
    try:
        check_reachable(runtime.engine)
        return _with_runtime(args, settings, runtime)
    finally:
        runtime.dispose()


def _erasure(args: argparse.Namespace, settings: Settings, runtime: Runtime) -> int:
    import datetime as dt
    from functools import partial

    from etl.erasure import apply_retention, erase_on_request

    if args.command == "erase":
        lines, report = erase_on_request(
            runtime.engine, settings, partial(runtime.router_client, args.institution), args.institution,
            args.pers_id, dry_run=args.dry_run, esse3=runtime.esse3(args.institution) if args.esse3 else None,
        )  # fmt: skip
        for line in lines:
            print(line)
        return ExitCode.ROUTER if report.unfinished else 0
    reports = apply_retention(
        runtime.engine, settings, lambda a: partial(runtime.router_client, a.code), dt.date.today(),
        dry_run=args.dry_run,
    )  # fmt: skip
    for code, r in reports.items():
        if args.dry_run:
            print(f"{code}: {r.unfinished} person(s) due for erasure (dry run: nothing changed)")
        else:
            print(f"{code}: {r.erased} person(s) erased, {r.cards_deleted} card(s) deleted at the Router"
                  + (f"; {r.unfinished} unfinished (run again)" if r.unfinished else ""))  # fmt: skip
            for line in r.refused + ([r.busy] if r.busy else []):
                print(f"esc-sync: {code}: {line}", file=sys.stderr)
    return ExitCode.ROUTER if any(r.unfinished for r in reports.values()) and not args.dry_run else 0


def _print_config(settings: Settings) -> int:
    """What was understood, secrets never shown; a warning (exit 0) for what will fail at run time."""
    from etl.deploy.env import BROKER_ENV, DAGSTER_PG_ENV, redacted
    from etl.store.db import sqlite_file_missing

    for a in settings.atenei:
        key = "set" if a.router_api_key() else "NOT SET"
        print(
            f"{a.code}: PIC {a.pic}, ESI scope {a.schac_home_organization}, consent {a.consent}, "
            f"Router key ${a.router_api_key_env} {key}, Esse3 {redacted(a.esse3_url)}"
        )
        if missing := sqlite_file_missing(a.esse3_url):
            print(
                f"esc-sync: warning: university {a.code}: Esse3 database file {missing} not found",
                file=sys.stderr,
            )
    print(
        f"academic years {settings.first_academic_year}-{settings.last_academic_year}; "
        f"state DB {redacted(settings.database_url)}; Esse3 time zone {settings.esse3_timezone}"
    )
    if (d := settings.deploy) is not None:
        storage = redacted(os.environ.get(DAGSTER_PG_ENV) or "NOT SET")
        broker = redacted(os.environ.get(BROKER_ENV) or "default (RabbitMQ guest on loopback)")
        print(
            f"deployment: executor {d.executor}, {d.max_concurrent_runs} runs at once "
            f"({d.runs_per_university} per university), {d.router_steps} Router steps, sensor every "
            f"{d.sensor_interval_s} s; Dagster storage {storage}; broker {broker}"
        )
    return 0


def _with_runtime(args: argparse.Namespace, settings: Settings, runtime: Runtime) -> int:
    from etl.store import migrate

    if args.command == "db":
        if args.action == "upgrade":
            migrate.upgrade(runtime.engine, args.revision or "head")
        elif args.action == "downgrade":
            if not args.revision:
                raise EscSyncError("db downgrade needs a revision (e.g. base, or a revision id)")
            migrate.downgrade(runtime.engine, args.revision)
        print(
            f"state DB at revision {migrate.current_revision(runtime.engine)} "
            f"(head {migrate.head_revision()})"
        )
        return 0
    if migrate.current_revision(runtime.engine) != migrate.head_revision():
        raise EscSyncError("state DB is not migrated to the latest revision: run `esc-sync db upgrade`")

    if args.command in ("erase", "retention"):
        return _erasure(args, settings, runtime)

    from etl.changes import local_work, pending_partitions
    from etl.definitions import build_definitions
    from etl.orchestrate import Backfill, ensure_instance, run_partitions
    from etl.partitions import Partition
    from etl.report import failures, progress, say, summary

    if args.command == "status":
        summary(settings, runtime)
        return 0
    unread: list[EscSyncError] = []  # `sync`: universities whose Esse3 could not be read
    if args.command == "sync":

        def skip_university(e: EscSyncError) -> None:
            print(f"esc-sync: {e}", file=sys.stderr)
            unread.append(e)

        todo = [c.partition for c in pending_partitions(settings, runtime, on_error=skip_university)]
        # ... and whatever is left undone, whether or not Esse3 changed (etl.unfinished)
        from etl.definitions import PARTITION_RUN_JOBS
        from etl.unfinished import latest_unsuccessful, partitions_with_work

        failed = latest_unsuccessful(ensure_instance(settings), *PARTITION_RUN_JOBS)
        with runtime.engine.connect() as conn:
            todo += [w.partition for w in partitions_with_work(conn, settings, failed)]
    elif args.command == "reconcile":
        from etl.definitions import PARTITION_RUN_JOBS
        from etl.reconcile import reconcile
        from etl.report import drift_lines
        from etl.store import source_state
        from etl.store.work import unfinished_totals
        from etl.sweep import sweep
        from etl.unfinished import latest_unsuccessful, partitions_with_work

        if args.confirm_vanished and not args.repair:
            raise EscSyncError("reconcile: --confirm-vanished applies held deletions: give --repair too")
        codes = args.institution or settings.codes
        for code in codes:
            settings.ateneo(code)
        sweeps = sweep(runtime, codes, record=args.repair)
        with runtime.engine.begin() as conn:
            held = [
                h
                for code in codes
                for h in (source_state.confirm_holds if args.confirm_vanished else source_state.holds)(
                    conn, code
                )
            ]
        results = reconcile(runtime, codes, repair=args.repair)
        failed = latest_unsuccessful(ensure_instance(settings), *PARTITION_RUN_JOBS)
        with runtime.engine.connect() as conn:
            left = [
                w for w in partitions_with_work(conn, settings, failed) if w.partition.institution in codes
            ]
            undone = {code: (unfinished_totals(conn, code), failed) for code in codes}
        drift_code = drift_lines(results, args.repair, sweeps, held, undone)
        todo = [p for r in results for p in r.to_run]
        if args.repair:
            todo += [Partition(y, s.institution) for s in sweeps for y in s.years]
            todo += [Partition.parse(h.partition_key) for h in held if h.confirmed]
            todo += [w.partition for w in left]
        if not todo:
            return drift_code
    else:
        todo = [Partition.parse(k) for k in args.partition]
        if args.institution or args.years:
            codes = args.institution or settings.codes
            years = args.years or settings.academic_years
            todo += [Partition(y, c) for c in codes for y in years]
        if not todo:
            raise EscSyncError("materialize: give --partition KEY or --institution/--years")
    for p in todo:
        settings.ateneo(p.institution)
        if p.academic_year not in settings.academic_years:
            raise EscSyncError(f"academic year {p.academic_year} is outside the configured academic_years")
    todo = sorted(set(todo))
    print(f"running {len(todo)} partition(s)")
    defs, instance = build_definitions(settings, runtime), ensure_instance(settings)

    def run(partitions: list[Partition]) -> Backfill:
        return run_partitions(
            defs,
            instance,
            partitions,
            progress=progress,
            say=say,
            wait_timeout_s=settings.run_wait_timeout_s,
            lock_engine=runtime.engine,
        )

    backfill = run(todo)
    if args.command == "sync":  # a run can leave work for another partition (a card moved year)
        with runtime.engine.connect() as conn:
            follow = sorted({c.partition for c in local_work(conn, settings)})
        if follow:
            print(f"running {len(follow)} partition(s) the first ones left work for")
            more = run(follow)
            backfill = Backfill(
                backfill.runs + more.runs, backfill.failures + more.failures, backfill.reaped + more.reaped
            )
    code = failures(backfill)
    if unread:  # the other universities ran; the exit code still says one could not be read
        kinds = {e.exit_code for e in unread} | ({code} if code else set())
        return kinds.pop() if len(kinds) == 1 else ExitCode.MIXED
    return code if args.command != "reconcile" or code else drift_code


if __name__ == "__main__":
    sys.exit(main())
