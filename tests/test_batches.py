"""Batched backfills (issue 25): a university's never-read partitions in one run, each partition
still a run of its own (lock, pool, checks), one's failure isolated, a rerun of the batch skipping
what it finished, a run left by a dead process found dead."""

from __future__ import annotations

import datetime as dt
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from dagster import (
    AssetKey,
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    RunsFilter,
    build_sensor_context,
)
from dagster._core.code_pointer import ModuleCodePointer
from dagster._core.launcher.base import WorkerStatus
from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin
from dagster._core.remote_origin import InProcessCodeLocationOrigin, RemoteJobOrigin, RemoteRepositoryOrigin
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from sqlalchemy import insert

from etl.batches import (
    BACKFILL_TAG,
    BATCH_JOB,
    BATCH_KIND,
    BATCH_TAG,
    KIND_TAG,
    ROOT_RUN_TAG,
    UNIVERSITY_TAG,
    batch_config,
    batch_years,
    plan_batches,
)
from etl.changes import PartitionChange
from etl.config import DeploySettings
from etl.definitions import JOB_NAME, build_definitions
from etl.demo.generate import generate
from etl.deploy.launcher import MonitoredRunLauncher
from etl.deploy.range_runs import HANDED_FROM_TAG, hand_off
from etl.emulator import EmulatorProcess
from etl.partition_job import PARTITION_JOB
from etl.partitions import Partition
from etl.resources.runtime import Runtime
from etl.run_tags import HOST_TAG, PID_TAG
from etl.store import cards as card_store
from etl.store.locks import STEP_PID
from etl.store.models import PartitionLock
from tests.fixtures.world import NOW, PICS, make_runtime


def change(year: int, university: str, first_read: bool = True) -> PartitionChange:
    return PartitionChange(Partition(year, university), NOW, first_read=first_read)


def test_never_read_partitions_are_batched_by_university_in_year_order() -> None:
    changes = [
        *(change(y, "unife") for y in (2021, 2019, 2020)), change(2020, "unipa"),
        change(2024, "unife", first_read=False), change(2019, "unimi"), change(2020, "unimi"),
    ]  # fmt: skip
    batches, singles = plan_batches(changes, 2, busy={"unimi"})
    assert [(b.university, b.years) for b in batches] == [("unife", [2019, 2020])]
    # a lone new partition and an incremental change run alone; unimi waits for its batch in flight
    assert sorted(c.partition.key for c in singles) == ["2020|unipa", "2021|unife", "2024|unife"]
    request = batches[0].run_request()
    assert request.partition_key == "unife"  # the batch job's partition: the university
    assert request.run_key == "batch:" + "+".join(c.run_key for c in batches[0].changes)
    assert batch_years(request.run_config) == [2019, 2020]
    # size 1: no batch at all
    assert plan_batches(changes, 1, busy=set()) == ([], changes)


@pytest.fixture
def batch_runtime(tmp_path: Path, emulator: EmulatorProcess, state_url: str) -> Iterator[Runtime]:
    for seed, code in ((1, "unife"), (2, "unipa")):
        generate(f"sqlite:///{tmp_path / f'esse3-{code}.sqlite'}", seed=seed, students=120,
                 first_year=2024, last_year=2025, now=NOW)  # fmt: skip
    rt = make_runtime(state_url, tmp_path, emulator.url)
    rt.settings = replace(rt.settings, deploy=DeploySettings(executor="in_process"))
    yield rt
    rt.dispose()


def _partition_runs(instance: DagsterInstance, batch: str) -> dict[str, list[DagsterRunStatus]]:
    out: dict[str, list[DagsterRunStatus]] = {}
    for run in instance.get_runs(RunsFilter(job_name=PARTITION_JOB, tags={BATCH_TAG: batch})):
        out.setdefault(run.tags["dagster/partition"], []).append(run.status)
    return out


def test_a_batch_runs_each_partition_as_its_own_run_isolates_a_failure_and_resumes(
    batch_runtime: Runtime, emulator: EmulatorProcess
) -> None:
    rt = batch_runtime
    defs = build_definitions(rt.settings, rt)
    batch_job = defs.resolve_job_def(BATCH_JOB)
    with DagsterInstance.ephemeral() as instance:
        # the sensor asks for one batch per university, no partition run
        sensor = defs.resolve_sensor_def("esse3_changes")
        result = sensor(build_sensor_context(instance=instance))
        requests = result.run_requests or []
        assert sorted((r.job_name, r.partition_key, batch_years(r.run_config)) for r in requests) == [
            (BATCH_JOB, "unife", [2024, 2025]), (BATCH_JOB, "unipa", [2024, 2025]),
        ]  # fmt: skip

        # 2024|unife is held by a run in flight: that partition is refused, 2025|unife is done anyway
        holder = instance.add_run(DagsterRun(job_name=JOB_NAME, status=DagsterRunStatus.STARTED))
        with rt.engine.begin() as conn:
            conn.execute(insert(PartitionLock).values(
                partition_key="2024|unife", run_id=holder.run_id, pid=STEP_PID, host=socket.gethostname(),
                acquired_at=dt.datetime.now(dt.UTC).replace(tzinfo=None),
            ))  # fmt: skip
        first = batch_job.execute_in_process(partition_key="unife", instance=instance, raise_on_error=False)
        assert first.dagster_run.tags[UNIVERSITY_TAG] == "unife"  # the partition's tag: the queue counts it
        assert not first.success
        failure = next(e for e in first.all_events if e.is_step_failure)
        message = failure.step_failure_data.error.message
        assert "Failure: 1 of 2 partition(s) failed (2024|unife): each runs again on its own" in message
        assert "is being run by run" in message
        assert _partition_runs(instance, first.run_id) == {"2025|unife": [DagsterRunStatus.SUCCESS]}
        # still unread, the next tick asks for it on its own (unipa, never batched here, as a batch)
        result = sensor(build_sensor_context(instance=instance))
        asked = sorted((r.job_name, r.partition_key) for r in result.run_requests)
        assert asked == [(JOB_NAME, "2024|unife"), (BATCH_JOB, "unipa")]
        # ... but not while a run of it is in progress (or queued): that run reads the change
        for job_name in (JOB_NAME, PARTITION_JOB):
            busy = instance.add_run(DagsterRun(job_name=job_name, status=DagsterRunStatus.STARTED,
                                               tags={"dagster/partition": "2024|unife"}))  # fmt: skip
            result = sensor(build_sensor_context(instance=instance))
            assert [r.partition_key for r in result.run_requests] == ["unipa"], job_name
            instance.report_run_canceled(busy)

        # the holder ends; the batch run again (as run retries would) runs only what is left
        instance.report_run_failed(holder)
        again = batch_job.execute_in_process(
            partition_key="unife",
            run_config=batch_config([2024, 2025]),  # as the launchpad's years
            instance=instance,
            tags={ROOT_RUN_TAG: first.run_id},
        )
        assert again.success
        assert _partition_runs(instance, first.run_id) == {  # 2025|unife not run twice
            "2024|unife": [DagsterRunStatus.SUCCESS], "2025|unife": [DagsterRunStatus.SUCCESS],
        }  # fmt: skip

        # what the batch registered is at the Router, once
        with rt.engine.connect() as conn:
            local = card_store.registered_totals(conn, "unife")
        assert local["cards"] > 0
        assert emulator.stats()["organisations"][PICS["unife"]] == local | {"deleted_cards": 0}

        # a batch in flight for unife: the next tick asks only for unipa's
        in_flight = batch_config([2024, 2025])
        instance.add_run(DagsterRun(job_name=BATCH_JOB, status=DagsterRunStatus.STARTED,
                                    tags={UNIVERSITY_TAG: "unipa"}, run_config=in_flight))  # fmt: skip
        result = sensor(build_sensor_context(instance=instance))
        assert not getattr(result, "run_requests", None)  # unife read, unipa's batch in flight

        # a batch an asset backfill's range run handed over (etl.deploy.range_runs): only the assets it
        # was given, each partition run carrying the backfill's tag (how Dagster's backfill counts it)
        given = ["careers", "esi_assignments"]
        handed = batch_job.execute_in_process(
            partition_key="unipa", run_config=batch_config([2024, 2025], given), instance=instance,
            tags={BACKFILL_TAG: "b1"},
        )  # fmt: skip
        assert handed.success
        runs = instance.get_runs(RunsFilter(tags={BATCH_TAG: handed.run_id}))
        assert sorted((r.tags["dagster/partition"], r.tags[BACKFILL_TAG]) for r in runs) == [
            ("2024|unipa", "b1"), ("2025|unipa", "b1"),
        ]  # fmt: skip
        for run in runs:
            made = instance.all_logs(run.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION)
            assert (
                sorted(e.dagster_event.asset_key.to_user_string() for e in made if e.dagster_event) == given
            )


def test_a_partition_run_left_by_a_dead_process_is_found_dead(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with DagsterInstance.ephemeral() as instance:
        launcher = MonitoredRunLauncher()
        launcher.register_instance(instance)
        here = socket.gethostname()
        for pid, status in ((dead.pid, WorkerStatus.NOT_FOUND), (os.getpid(), WorkerStatus.RUNNING)):
            run = instance.add_run(DagsterRun(job_name=JOB_NAME, status=DagsterRunStatus.STARTED,
                                              tags={PID_TAG: str(pid), HOST_TAG: here}))  # fmt: skip
            assert launcher.check_run_worker_health(run).status == status
        elsewhere = instance.add_run(
            DagsterRun(job_name=JOB_NAME, status=DagsterRunStatus.STARTED,
                       tags={PID_TAG: str(dead.pid), HOST_TAG: "another-host"})
        )  # fmt: skip
        assert launcher.check_run_worker_health(elsewhere).status == WorkerStatus.UNKNOWN


def test_a_batch_needs_its_university_and_configured_years(batch_runtime: Runtime) -> None:
    batch_job = build_definitions(batch_runtime.settings, batch_runtime).resolve_job_def(BATCH_JOB)
    with DagsterInstance.ephemeral() as instance:
        cases = {
            "a batch is one university's: launch it with the university as its partition": {},
            "academic year(s) [2031] not configured ([2024, 2025])": {"partition_key": "unife"},
        }
        for message, partition in cases.items():
            result = batch_job.execute_in_process(
                run_config=batch_config([2025, 2031]), instance=instance, raise_on_error=False, **partition
            )
            failure = next(e for e in result.all_events if e.is_step_failure)
            assert message in failure.step_failure_data.error.message
        # nothing was run for either
        assert not instance.get_runs(RunsFilter(job_name=JOB_NAME))


def _range_run(start: str, end: str, assets: frozenset[AssetKey] | None, **tags: str) -> DagsterRun:
    """A run as Dagster's asset backfill makes one for a range (of its implicit asset job)."""
    job, module = "__ASSET_JOB", "etl.definitions"
    target = LoadableTargetOrigin(executable_path=sys.executable, module_name=module, attribute="defs")
    code = JobPythonOrigin(job, RepositoryPythonOrigin(sys.executable, ModuleCodePointer(module, "defs")))
    location = InProcessCodeLocationOrigin(target)
    remote = RemoteJobOrigin(RemoteRepositoryOrigin(location, "__repository__"), job)
    range_tags = {ASSET_PARTITION_RANGE_START_TAG: start, ASSET_PARTITION_RANGE_END_TAG: end}
    return DagsterRun(job_name=job, status=DagsterRunStatus.STARTED, tags={**range_tags, **tags},
                      asset_selection=assets, job_code_origin=code, remote_job_origin=remote)  # fmt: skip


def test_a_range_run_hands_its_partitions_to_a_queued_batch_per_university_once(
    batch_runtime: Runtime, tmp_path: Path
) -> None:
    """An asset backfill's range run (etl.deploy.range_runs): a queued batch per university of its range,
    with the backfill's tag, the assets it was asked for, the batch job's origins; its retry hands off
    only what the first attempt did not."""
    repository = build_definitions(batch_runtime.settings, batch_runtime).get_repository_def()
    queued = {"run_coordinator": {"module": "dagster._core.run_coordinator", "class": "QueuedRunCoordinator"}}
    (tmp_path / "dagster").mkdir()
    with DagsterInstance.local_temp(str(tmp_path / "dagster"), overrides=queued) as instance:
        qr = frozenset({AssetKey("qr_images")})
        # Dagster's range of one year across universities (as many universities as years, or more)
        first = instance.add_run(_range_run("2025|unife", "2025|unipa", qr, **{BACKFILL_TAG: "b1"}))
        lines = list(hand_off(instance, first, repository))
        batches = instance.get_runs(RunsFilter(job_name=BATCH_JOB))
        assert len(lines) == len(batches) == 2
        for batch in batches:
            university = batch.tags[UNIVERSITY_TAG]
            assert batch.status == DagsterRunStatus.QUEUED
            assert batch.tags["dagster/partition"] == university in ("unife", "unipa")
            assert (batch.tags[BACKFILL_TAG], batch.tags[HANDED_FROM_TAG], batch.tags[KIND_TAG]) == (
                "b1", first.run_id, BATCH_KIND,
            )  # fmt: skip
            assert batch.run_config == batch_config([2025], ["qr_images"])
            assert batch.job_code_origin and batch.job_code_origin.job_name == BATCH_JOB
            assert batch.remote_job_origin and batch.remote_job_origin.job_name == BATCH_JOB

        # the range run retried (its process died after handing off): nothing is handed twice
        retry = instance.add_run(_range_run("2025|unife", "2025|unipa", qr, **{ROOT_RUN_TAG: first.run_id}))
        assert list(hand_off(instance, retry, repository)) == [
            "unife: [2025] handed to a batch before", "unipa: [2025] handed to a batch before",
        ]  # fmt: skip
        assert len(instance.get_runs(RunsFilter(job_name=BATCH_JOB))) == 2

        # a university's years, every asset: one batch of both years, the whole job (no asset list)
        whole = instance.add_run(_range_run("2024|unife", "2025|unife", None))
        [line] = hand_off(instance, whole, repository)
        assert line.startswith("unife: 2 partition(s) handed to batch run ")
        batch = instance.get_run_by_id(line.rsplit(" ", 1)[1])
        assert batch and batch.run_config == batch_config([2024, 2025]) and BACKFILL_TAG not in batch.tags
