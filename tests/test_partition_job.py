"""The partition job (etl.partition_job): a batch's partition in two steps records what the asset job's
run of it records — every asset's materialisation with the same metadata, every check's evaluation on
it, the materialisations planned at the start — for far fewer events; its runs count as partition runs
for the unfinished_work sensor."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterEventType, DagsterInstance, DagsterRun, DagsterRunStatus

from etl.definitions import JOB_NAME, PARTITION_RUN_JOBS, build_definitions
from etl.demo.config import key_env
from etl.demo.generate import generate
from etl.emulator import EmulatorProcess
from etl.orchestrate import run_partitions
from etl.partition_job import PARTITION_JOB, split_at_router
from etl.partitions import Partition
from etl.resources.runtime import Runtime
from etl.unfinished import latest_unsuccessful
from tests.fixtures.world import NOW, demo_settings, make_runtime


def test_the_first_step_ends_with_the_last_asset_that_calls_the_router(tmp_path: Path) -> None:
    defs = build_definitions(demo_settings(tmp_path, f"sqlite:///{tmp_path / 'state.sqlite'}"))
    assets = [a for a in defs.assets or () if hasattr(a, "op")]
    chain, rest = split_at_router(assets)  # type: ignore[arg-type]
    names = lambda xs: [a.key.to_user_string() for a in xs]  # noqa: E731
    assert set(names(chain)) == {"careers", "esi_assignments", "badges", "esc_cards"}
    assert {"qr_images", "export_files", "esse3_badge_write_back"} <= set(names(rest))
    assert "esc_cards" == names(chain)[-1]
    ordered = [*chain, *rest]
    for i, a in enumerate(ordered):  # each after what it depends on
        assert a.asset_deps[a.key] <= {b.key for b in ordered[:i]}, a.key


@pytest.fixture
def unife(tmp_path: Path, emulator: EmulatorProcess, state_url: str) -> Iterator[Runtime]:
    generate(f"sqlite:///{tmp_path / 'esse3-unife.sqlite'}", seed=1, students=120, first_year=2024,
             last_year=2025, now=NOW)  # fmt: skip
    rt = make_runtime(state_url, tmp_path, emulator.url)
    yield rt
    rt.dispose()


def _events(instance: DagsterInstance, run_id: str) -> list[object]:
    return [r.dagster_event for r in instance.all_logs(run_id) if r.dagster_event]


def test_a_partition_run_of_the_partition_job_records_what_the_asset_job_records(
    unife: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    defs = build_definitions(unife.settings, unife)
    lean, full = Partition(2024, "unife"), Partition(2025, "unife")
    with DagsterInstance.ephemeral() as instance:
        key = os.environ.pop(key_env("unife"))  # no Router key: the first step fails at the ESI asset
        failed = run_partitions(defs, instance, [lean], lock_engine=unife.engine, job_name=PARTITION_JOB)
        monkeypatch.setenv(key_env("unife"), key)
        assert [f.partition for f in failed.failures] == [lean]
        [run] = instance.get_runs()
        assert run.job_name == PARTITION_JOB and run.status == DagsterRunStatus.FAILURE
        mats = instance.all_logs(run.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION)
        assert [e.dagster_event.asset_key.to_user_string() for e in mats if e.dagster_event] == [
            "careers",
            "badges",
        ]
        # a failed run of the partition job is a partition run the unfinished_work sensor retries
        assert latest_unsuccessful(instance, *PARTITION_RUN_JOBS) == {lean.dagster_key(): "FAILURE"}
        assert latest_unsuccessful(instance, JOB_NAME) == {}

        ran = run_partitions(defs, instance, [lean], lock_engine=unife.engine, job_name=PARTITION_JOB)
        assert not ran.failures
        # ... and once it succeeds, it is the partition's latest run
        assert latest_unsuccessful(instance, *PARTITION_RUN_JOBS) == {}
        baseline = run_partitions(defs, instance, [full], lock_engine=unife.engine)
        assert not baseline.failures
        [lean_run] = [r for r in instance.get_runs() if r.job_name == PARTITION_JOB and r.is_success]
        [full_run] = [r for r in instance.get_runs() if r.job_name == JOB_NAME and r.is_success]

        def made(run: DagsterRun) -> dict[str, list[str]]:
            mats = instance.all_logs(run.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION)
            out = {}
            for e in mats:
                assert e.dagster_event and e.dagster_event.partition == run.tags["dagster/partition"]
                m = e.dagster_event.step_materialization_data.materialization
                out[m.asset_key.to_user_string()] = sorted(m.metadata)
            return out

        assert made(lean_run) == made(full_run) and len(made(lean_run)) >= 8
        assert (
            ran.runs[0].metadata["esc_cards"]["dagster/row_count"] > 0
        )  # the work was done, not only recorded

        def checks(run: DagsterRun) -> Counter[tuple[str, str]]:
            evals = instance.all_logs(run.run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION)
            out: Counter[tuple[str, str]] = Counter()
            for e in evals:
                assert e.dagster_event
                ev = e.dagster_event.asset_check_evaluation_data
                target = ev.target_materialization_data
                assert target is not None and target.run_id == run.run_id  # the partition's, just made
                out[(ev.asset_key.to_user_string(), ev.check_name)] += 1  # passed or not: the years differ
            return out

        assert checks(lean_run) == checks(full_run) and sum(checks(lean_run).values()) >= 5
        # every asset planned at the start, as the asset job's runs are: the automation sees it in progress
        for asset in made(lean_run):
            planned = instance.event_log_storage.get_latest_planned_materialization_info(
                asset_key=AssetKey.from_user_string(asset), partition=lean.dagster_key()
            )
            assert planned is not None and planned.run_id == lean_run.run_id, asset
        # in the order the asset job's run executes its steps
        assert list(made(lean_run)) == [
            e.step_key
            for e in _events(instance, full_run.run_id)
            if e.is_step_start  # type: ignore[attr-defined]
        ]
        lean_events, full_events = _events(instance, lean_run.run_id), _events(instance, full_run.run_id)
        assert len(lean_events) < 0.6 * len(full_events)  # 34 against 62 when written
        steps = {e.step_key for e in lean_events if e.is_step_success}  # type: ignore[attr-defined]
        assert steps == {"router_chain", "outputs"}
