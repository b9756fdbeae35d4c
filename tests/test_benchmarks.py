"""Benchmarks cannot rot: every script in bench/ runs here at a tiny size and must finish with exit 0.
The figures mean nothing at these sizes (and targets are not checked): this only proves that each
script still runs against today's code. The real measurements are in docs/performance.md."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"

# script → tiny arguments (thresholds set so that a tiny run never "fails" on a figure)
TINY: dict[str, list[str]] = {
    "bench_api.py": ["--cards", "200", "--export-rows", "500", "--seconds", "0.5", "--rate", "50",
                     "--repeat", "1"],
    "bench_badge_pdf.py": ["--rounds", "1", "--sheet", "10"],
    "bench_export_pipeline.py": ["--cards", "300", "--naive-sample", "20", "--min-ratio", "0"],
    "bench_exports.py": ["--rows", "500", "--batch-size", "100", "--qr-pool", "20"],
    "bench_http_transport.py": ["--requests", "100", "--rounds", "1"],
    "bench_ingest.py": ["--n", "400"],
    "bench_partition_run.py": ["--students", "40", "--years", "2", "--rounds", "1", "--upstream",
                               "has_table", "--upstream", "store_event"],
    "bench_qr.py": ["--n", "50", "--rounds", "1", "--min-ratio", "0"],
    "bench_router.py": ["--students", "150", "--sequential-students", "30", "--latency-ms", "2"],
    "bench_statistics.py": ["--careers", "2000", "--universities", "5", "--rounds", "1", "--repeat", "1"],
    "bench_sweep.py": ["--n", "400"],
    "bench_wallet.py": ["--cards", "20", "--university-cards", "100", "--follow-cards", "20"],
    "bench_latency.py": ["--events", "2", "--every", "1", "--students", "40", "--workers", "1",
                         "--latency-ms", "2", "--idle", "2"],
    # two years: a batch; runs started Dagster's way, by serve's code server (bench_latency: the run host)
    "bench_scale.py": ["--universities", "1", "--years", "2", "--students", "30", "--workers", "1",
                       "--latency-ms", "2", "--no-run-host"],
}  # fmt: skip
DEPLOYMENT = {"bench_latency.py", "bench_scale.py"}  # start a whole deployment: PostgreSQL and RabbitMQ
POSTGRES = {"bench_ingest.py", "bench_partition_run.py", "bench_statistics.py", "bench_sweep.py"}


def test_every_benchmark_is_listed() -> None:
    assert {p.name for p in BENCH.glob("bench_*.py")} == set(TINY)


@pytest.mark.slow
@pytest.mark.parametrize(
    "script",
    [pytest.param(s, marks=pytest.mark.postgres) if s in DEPLOYMENT | POSTGRES
     else s for s in sorted(TINY)],
)  # fmt: skip
def test_the_benchmark_runs_at_a_tiny_size(script: str, tmp_path: Path) -> None:
    if script in DEPLOYMENT:
        pytest.importorskip("celery")
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # its caches and work folders go away with the test
    done = subprocess.run(
        [sys.executable, str(BENCH / script), *TINY[script]],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, (
        f"{script} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )


def test_bench_scale_names_each_failed_run_and_why() -> None:
    """A failed run in a benchmark is reported with its partition and the step's own error, not
    Dagster's wrapper: the figures of a run with failures are read knowing why."""
    from dagster import DagsterInstance, job, op

    sys.path.insert(0, str(BENCH))
    from bench_scale import failure_reasons

    @op
    def register() -> None:
        raise ValueError("the Router refused the key\nand a second line")

    @op
    def fine() -> None:
        pass

    @job
    def esc_sync() -> None:
        register()

    @job
    def quiet() -> None:
        fine()

    with DagsterInstance.ephemeral() as instance:
        assert failure_reasons(instance) == []
        quiet.execute_in_process(instance=instance, tags={"dagster/partition": "2024|unife"})
        esc_sync.execute_in_process(
            instance=instance, raise_on_error=False, tags={"dagster/partition": "2025|unife"}
        )
        assert failure_reasons(instance) == ["esc_sync 2025|unife: ValueError: the Router refused the key"]
