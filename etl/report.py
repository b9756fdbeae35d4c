"""What the CLI prints: per-partition progress lines and the summary table (no personal data)."""

from __future__ import annotations

import sys

from etl.config import Settings
from etl.errors import ExitCode, UniversityError
from etl.orchestrate import Backfill, PartitionFailure, PartitionRun
from etl.partitions import all_partitions
from etl.reconcile import UniversityDrift
from etl.resources.runtime import Runtime
from etl.store import careers as store
from etl.store import router_state


def say(msg: str = "") -> None:
    print(msg, flush=True)


def progress(i: int, n: int, run: PartitionRun | PartitionFailure) -> None:
    if isinstance(run, PartitionFailure):
        what = "SKIPPED" if run.skipped else "FAILED"
        say(f"  [{i:>2}/{n}] {run.partition.key:<14} {what}: {run.message}")
        return
    c = run.metadata.get("careers", {})
    e = run.metadata.get("esi_assignments", {})
    k = run.metadata.get("esc_cards", {})
    router = ""
    if e or k:
        router = (
            f" | ESI +{e.get('registered', 0) + e.get('adopted', 0)} ({e.get('updated', 0)} upd)"
            f" | cards +{k.get('registered', 0) + k.get('reconciled', 0)} ({k.get('updated', 0)} upd)"
            f" | retries {e.get('retries', 0) + k.get('retries', 0)}"
        )
        # calls whose retries ran out: retried by the next run
        if failed := e.get("failed", 0) + k.get("failed", 0):
            router += f" | failed {failed} (retried next run)"
    q = run.metadata.get("qr_images", {})
    x = run.metadata.get("export_files", {})
    if q or x:
        router += f" | QR +{q.get('rendered', 0)} | export {x.get('kind', 'none')}"
    if (b := run.metadata.get("esse3_badge_write_back", {})).get("enabled"):
        router += f" | onto badges {b.get('written', 0)}"
    say(
        f"  [{i:>2}/{n}] {run.partition.key:<14} careers +{c.get('inserted', 0)} "
        f"({c.get('updated', 0)} upd, {c.get('unchanged', 0)} same, {c.get('quarantined', 0)} quar)"
        f"{router}  {run.seconds:.1f}s"
    )


def summary(settings: Settings, runtime: Runtime, router: dict[str, dict[str, int]] | None = None) -> None:
    """Per partition: local counts; per university: local registrations beside the Router's."""
    say("\nSummary (state DB):")
    say(f"  {'partition':<14} {'careers':>8} {'finalised':>9} {'quarantined':>11}  top reasons")
    with runtime.engine.connect() as conn:
        for p in all_partitions(settings):
            c = store.partition_counts(conn, p.institution, p.academic_year)
            reasons = ", ".join(
                f"{r} ×{n}" for r, n in store.top_quarantine_reasons(conn, p.institution, p.academic_year)
            )
            say(f"  {p.key:<14} {c['careers']:>8} {c['finalised']:>9} {c['quarantined']:>11}  {reasons}")
        for a in settings.atenei:
            backlog = router_state.retry_backlog(conn, a.code)
            if any(backlog.values()):
                say(
                    f"  {a.code}: Router calls whose retries ran out: {backlog['persons']} person(s), "
                    f"{backlog['cards']} card(s); the next run retries them"
                )
        for a in settings.atenei:
            if a.write_back_badge:
                try:
                    escns, pngs = runtime.esse3(a.code).badge_write_back_counts()
                except UniversityError as e:  # the status of the rest is still worth printing
                    say(f"  {e}")
                    continue
                cards = router_state.registered_totals(conn, a.code)["cards"]
                say(
                    f"  {a.code}: {escns} Esse3 badge(s) carry their card's ESCN, QR URL and status"
                    + (f", {pngs} the QR image" if a.write_back_qr_png else "")
                    + f" ({cards} registered card(s))"
                )
        if router is None:
            return
        say("\nRouter beside local state:")
        say(
            f"  {'university':<10} {'persons local':>13} {'at Router':>9} "
            f"{'cards local':>11} {'at Router':>9}"
        )
        for a in settings.atenei:
            local = router_state.registered_totals(conn, a.code)
            remote = router.get(a.pic, {})
            mark = (
                ""
                if (local["persons"], local["cards"]) == (remote.get("persons", 0), remote.get("cards", 0))
                else "  ← MISMATCH"
            )
            say(
                f"  {a.code:<10} {local['persons']:>13} {remote.get('persons', 0):>9} "
                f"{local['cards']:>11} {remote.get('cards', 0):>9}{mark}"
            )


def failures(backfill: Backfill) -> ExitCode:
    """One stderr line per failure (a university's skipped partitions folded into its line); the exit
    code names the kind of failure (``ExitCode``), MIXED when partitions failed for different ones."""
    if backfill.reaped:
        say(f"freed the pool slots of {backfill.reaped} run(s) whose process had died")
    for f in backfill.failures:
        if f.skipped:
            continue
        # A skipped partition carries the message of the failure that skipped it.
        skipped = [s.partition.institution for s in backfill.failures if s.skipped and s.message == f.message]
        whose = f" of {f.partition.institution}" if set(skipped) <= {f.partition.institution} else ""
        more = f"; {len(skipped)} more partition(s){whose} not run" if skipped else ""
        print(f"esc-sync: {f.message} ({f.partition.key}{more})", file=sys.stderr)
    kinds = {f.exit_code for f in backfill.failures}
    return ExitCode.OK if not kinds else kinds.pop() if len(kinds) == 1 else ExitCode.MIXED


# What each kind of drift is, and what --repair does about it (None: reported, no rule to repair).
DRIFT_KINDS = {
    "missing_persons": ("person(s) registered here, absent at the Router", "registered again"),
    "missing_cards": ("card(s) registered here, absent at the Router", "registered again"),
    "stale_cards": ("card(s) with another status or expiry at the Router", "updated"),
    "unknown_cards": ("card(s) at the Router unknown here", None),
    "mismatched_cards": ("card(s) with another person or type at the Router", None),
    "persons_without_cards": ("person(s) at the Router without a card, unknown here", None),
}


def drift_lines(results: list[UniversityDrift], repaired: bool) -> ExitCode:
    """One line per university: in step, or each kind of drift with what was done about it."""
    code = ExitCode.OK
    for r in results:
        if r.drift is None:
            print(f"esc-sync: reconcile {r.institution}: {r.error}", file=sys.stderr)
            code = ExitCode.ROUTER if code in (ExitCode.OK, ExitCode.ROUTER) else ExitCode.MIXED
            continue
        counts = {k: n for k, n in r.drift.counts().items() if n}
        if not counts:
            say(f"{r.institution}: the Router and the state DB agree")
            continue
        parts = []
        for kind, n in counts.items():
            what, repair = DRIFT_KINDS[kind]
            done = "reported" if repair is None else (repair if repaired else "run with --repair")
            parts.append(f"{n} {what} ({done})")
        say(f"{r.institution}: " + "; ".join(parts))
        if r.drift.reported_only or not repaired:
            code = ExitCode.DRIFT if code in (ExitCode.OK, ExitCode.DRIFT) else ExitCode.MIXED
    return code
