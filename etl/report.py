"""What the CLI prints: per-partition progress lines and the summary table (no personal data)."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence

from sqlalchemy import Connection

from etl.config import Settings
from etl.domain.retries import MAX_ATTEMPTS, exhausted
from etl.domain.sync_outcomes import SyncResult as R
from etl.errors import ExitCode, UniversityError
from etl.orchestrate import Backfill, PartitionFailure, PartitionRun
from etl.partitions import all_partitions
from etl.reconcile import UniversityDrift
from etl.resources.runtime import Runtime
from etl.store import cards, quarantine, source_state, work
from etl.store import careers as store
from etl.store.source_state import Hold
from etl.store.work import Unfinished
from etl.sweep import UniversitySweep


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
            f" | ESI +{e.get(R.REGISTERED, 0) + e.get(R.ADOPTED, 0)} ({e.get(R.UPDATED, 0)} upd)"
            f" | cards +{k.get(R.REGISTERED, 0) + k.get(R.RECONCILED, 0)} ({k.get(R.UPDATED, 0)} upd)"
            f" | retries {e.get('retries', 0) + k.get('retries', 0)}"
        )
        # calls whose retries ran out: the items stay pending, `sync` (or the deployment) runs them again
        if failed := e.get(R.FAILED, 0) + k.get(R.FAILED, 0):
            router += f" | failed {failed} (retried next run)"
    q = run.metadata.get("qr_images", {})
    x = run.metadata.get("export_files", {})
    if q or x:
        router += f" | QR +{q.get('rendered', 0)} | export {x.get('kind', 'none')}"
    b = run.metadata.get("badges", {})
    if vanished := c.get("vanished", 0) + b.get("vanished", 0):
        router += f" | vanished {vanished} (cards deactivated)"
    if moved := c.get("moved_in", 0) + b.get("moved_in", 0):
        router += f" | moved in {moved}"
    if retired := k.get("retired", 0):
        router += f" | retired {retired} (changed person)"
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
                f"{r} ×{n}" for r, n in quarantine.top_reasons(conn, p.institution, p.academic_year)
            )
            say(f"  {p.key:<14} {c['careers']:>8} {c['finalised']:>9} {c['quarantined']:>11}  {reasons}")
        for a in settings.atenei:
            left = work.unfinished_totals(conn, a.code)
            if left.persons or left.cards:
                say(f"  {a.code}: {left.describe()}: {who_retries(settings, conn, a.code)}")
            for h in source_state.holds(conn, a.code):
                noun = _NOUNS[h.source_table]
                what = f"{h.vanished} of {h.total} {noun} vanished at once"
                say(f"  {h.partition_key}: {what}, held by the guard (`esc-sync reconcile`)")
        for a in settings.atenei:
            if a.write_back_badge:
                try:
                    carried = {b: (e, png) for b, e, png in runtime.esse3(a.code).badges_carrying_cards()}
                except UniversityError as e:  # the status of the rest is still worth printing
                    say(f"  {e}")
                    continue
                current = cards.current_cards(conn, a.code)
                say(f"  {a.code}: {badges_line(current, carried, a.write_back_qr_png)}")
        if router is None:
            return
        say("\nRouter beside local state:")
        say(
            f"  {'university':<10} {'persons local':>13} {'at Router':>9} "
            f"{'cards local':>11} {'at Router':>9}"
        )
        for a in settings.atenei:
            local = cards.registered_totals(conn, a.code)
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


def who_retries(settings: Settings, conn: Connection, institution: str) -> str:
    """Who runs unfinished work again, truthfully: the deployment's sensor (with its attempts), or
    the operator."""
    if settings.deploy is None:
        return "`esc-sync sync` runs them again"
    states = [s for key, s in work.retries(conn).items() if key.endswith(f"|{institution}")]
    if not states:
        return "the deployment's unfinished_work sensor runs them again"
    if any(exhausted(s) for s in states):
        return f"the deployment gave up after {MAX_ATTEMPTS} attempts: `esc-sync sync` runs them again"
    latest = max(states, key=lambda s: s.attempts)
    return (
        f"the deployment runs them again (attempt {latest.attempts} of {MAX_ATTEMPTS}, "
        f"next after {latest.next_at:%H:%M} UTC)"
    )


def badges_line(current: dict[int, str], carried: dict[int, tuple[str, bool]], with_png: bool) -> str:
    """How many registered cards the Esse3 badges carry, by matching ESCN (a badge carrying another
    ESCN is not counted: another system, or an earlier installation, wrote it)."""
    matching = [b for b, escn in current.items() if carried.get(b, ("", False))[0] == escn]
    line = f"{len(matching)} of {len(current)} registered card(s) on their Esse3 badge (ESCN, QR URL, status)"
    if with_png:
        line += f", {sum(1 for b in matching if carried[b][1])} with the QR image"
    if others := sum(1 for b, (escn, _) in carried.items() if b in current and current[b] != escn):
        line += f"; {others} badge(s) carry another ESCN (not esc-sync's: quarantined, never overwritten)"
    return line


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


# What the source sweep finds (etl.sweep), and what --repair does about it.
SOURCE_KINDS = {
    "missing": ("in Esse3, missing here", "read"),
    "changed": ("changed in Esse3 under an old DATA_MOD", "read again"),
    "vanished": ("deleted from Esse3", "cards deactivated"),
    "moved": ("moved to another academic year", "moved with their cards"),
}
_NOUNS = {"P01_STU": "career(s)", "P01_BADGE": "badge(s)"}


def drift_lines(
    results: list[UniversityDrift],
    repaired: bool,
    sweeps: Sequence[UniversitySweep] = (),
    held: Sequence[Hold] = (),
    undone: Mapping[str, tuple[Unfinished, Mapping[str, str]]] = {},
) -> ExitCode:
    """One line per university: in step, or each kind of drift (Esse3 against the state DB, held mass
    deletions, work left undone, the Router against the state DB) with what was done about it.
    ``undone``: per university, its Router work not confirmed and the partitions whose latest run
    failed (partition key → status)."""
    code = ExitCode.OK

    def worse(kind: ExitCode) -> None:
        nonlocal code
        code = kind if code in (ExitCode.OK, kind) else ExitCode.MIXED

    swept = {s.institution: s for s in sweeps}
    for r in results:
        source = swept.get(r.institution)
        if r.drift is None or (source and source.error):
            error = r.error if r.drift is None else source.error if source else None
            print(f"esc-sync: reconcile {r.institution}: {error}", file=sys.stderr)
            worse(ExitCode.ROUTER if r.drift is None else ExitCode.DATABASE)
            continue
        parts = []
        if source is not None:
            for table, noun in _NOUNS.items():
                for kind, n in source.count(table).items():
                    if n:
                        what, fix = SOURCE_KINDS[kind]
                        parts.append(f"{n} {noun} {what} ({fix if repaired else 'run with --repair'})")
            if source.total and not repaired:
                worse(ExitCode.DRIFT)
        for h in (h for h in held if h.partition_key.endswith(f"|{r.institution}")):
            confirmation = (
                "confirmed: applied by this run"
                if h.confirmed
                else "confirm with --repair --confirm-vanished"
            )
            noun = _NOUNS[h.source_table]
            parts.append(f"{h.vanished} {noun} of {h.partition_key} held by the guard ({confirmation})")
            if not h.confirmed:
                worse(ExitCode.DRIFT)
        left, failed = undone.get(r.institution, (Unfinished(), {}))
        runs = [k for k in failed if k.endswith(f"|{r.institution}")]
        again = "run again" if repaired else "run with --repair"
        if left.persons or left.cards:
            parts.append(f"{left.describe()} ({again})")
        if runs:
            parts.append(f"{len(runs)} partition(s) whose latest run did not succeed ({again})")
        if (left.persons or left.cards or runs) and not repaired:
            worse(ExitCode.DRIFT)
        if r.erased_held:
            done = "deleted again" if repaired else "run with --repair"
            parts.append(f"{r.erased_held} erased person(s) or card(s) still at the Router ({done})")
            if not repaired:
                worse(ExitCode.DRIFT)
        for kind, n in r.drift.counts().items():
            if n:
                what, repair = DRIFT_KINDS[kind]
                done = "reported" if repair is None else (repair if repaired else "run with --repair")
                parts.append(f"{n} {what} ({done})")
        if r.drift.reported_only or (r.drift.repairable and not repaired):
            worse(ExitCode.DRIFT)
        agree = "Esse3, the state DB and the Router agree" if sweeps else "the Router and the state DB agree"
        say(f"{r.institution}: " + ("; ".join(parts) if parts else agree))
    return code
