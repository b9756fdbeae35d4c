"""What the CLI prints: per-partition progress lines and the summary table (no personal data)."""

from __future__ import annotations

from etl.config import Settings
from etl.orchestrate import PartitionRun
from etl.partitions import all_partitions
from etl.resources.runtime import Runtime
from etl.store import careers as store


def say(msg: str = "") -> None:
    print(msg, flush=True)


def progress(i: int, n: int, run: PartitionRun) -> None:
    c = run.metadata.get("careers", {})
    say(
        f"  [{i:>2}/{n}] {run.partition.key:<14} careers +{c.get('inserted', 0)} new, "
        f"{c.get('updated', 0)} updated, {c.get('unchanged', 0)} unchanged, "
        f"{c.get('quarantined', 0)} quarantined  ({run.seconds:.1f}s)"
    )


def summary(settings: Settings, runtime: Runtime) -> None:
    say("\nSummary (state DB):")
    say(f"  {'partition':<14} {'careers':>8} {'finalised':>9} {'quarantined':>11}  top reasons")
    with runtime.engine.connect() as conn:
        for p in all_partitions(settings):
            c = store.partition_counts(conn, p.institution, p.academic_year)
            reasons = ", ".join(
                f"{r} ×{n}" for r, n in store.top_quarantine_reasons(conn, p.institution, p.academic_year)
            )
            say(f"  {p.key:<14} {c['careers']:>8} {c['finalised']:>9} {c['quarantined']:>11}  {reasons}")
