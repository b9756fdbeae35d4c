"""Dagster wiring: definitions load, a partition materialises with metadata and checks, the sensor
requests runs only for partitions whose Esse3 data changed."""

from __future__ import annotations

import datetime as dt
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from dagster import (
    BackfillPolicy,
    DagsterInstance,
    Definitions,
    RunRequest,
    SensorResult,
    SkipReason,
    build_sensor_context,
    validate_run_config,
)
from dagster._core.definitions.automation_tick_evaluation_context import (
    build_run_requests_with_backfill_policies,
)
from dagster._core.definitions.events import AssetKeyPartitionKey
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG
from sqlalchemy import text, update
from sqlalchemy.exc import OperationalError

from etl.assets.router_calls import ROUTER_POOL
from etl.config import DeploySettings
from etl.definitions import JOB_NAME, build_definitions
from etl.demo.generate import generate
from etl.demo.schema import P01_STU
from etl.deploy.executor import steps_in_run
from etl.deploy.range_runs import is_range_run, owned_batches
from etl.emulator import EmulatorProcess
from etl.errors import ExitCode
from etl.partitions import Partition
from etl.resources.runtime import Runtime
from etl.store import cards as card_store
from etl.store.migrate import upgrade
from tests.fixtures.world import KEYS, NOW, PICS, demo_settings


@pytest.fixture
def runtime(tmp_path: Path, emulator: EmulatorProcess) -> Iterator[Runtime]:
    yield from _runtime(tmp_path, emulator, f"sqlite:///{tmp_path / 'state.sqlite'}")


@pytest.fixture
def any_state_runtime(tmp_path: Path, emulator: EmulatorProcess, state_url: str) -> Iterator[Runtime]:
    """The state DB on SQLite and on PostgreSQL."""
    yield from _runtime(tmp_path, emulator, state_url)


def _runtime(tmp_path: Path, emulator: EmulatorProcess, state_url: str) -> Iterator[Runtime]:
    for seed, code in ((1, "unife"), (2, "unipa")):
        generate(
            f"sqlite:///{tmp_path / f'esse3-{code}.sqlite'}",
            seed=seed,
            students=300,
            first_year=2024,
            last_year=2025,
            now=NOW,
        )
    settings = demo_settings(tmp_path, state_url, academic_years={"first": 2024, "last": 2025})
    rt = Runtime(replace(settings, router=replace(settings.router, url=emulator.url)))
    upgrade(rt.engine)
    yield rt
    rt.dispose()


def test_definitions_load_and_graph_is_as_expected(runtime: Runtime) -> None:
    defs = build_definitions(runtime.settings, runtime)
    Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    deps = {
        k.to_user_string(): {d.to_user_string() for d in graph.get(k).parent_keys}
        for k in graph.get_all_asset_keys()
    }
    assert deps == {
        "careers": set(),
        "esi_assignments": {"careers"},
        "badges": {"careers"},
        "esc_cards": {"esi_assignments", "badges"},
        "qr_images": {"esc_cards"},
        "esse3_badge_write_back": {"esc_cards", "qr_images"},
        "export_files": {"qr_images"},
        "badge_sheets": {"qr_images"},
    }
    checks = {k.name for k in graph.asset_check_keys}
    assert checks == {
        "no_duplicate_careers",
        "quarantine_share",
        "qr_complete",
        "esse3_matches_local",
        "router_matches_local",
        "router_calls_complete",
    }
    keys = defs.resolve_job_def(JOB_NAME).partitions_def.get_partition_keys()
    assert sorted(keys) == ["2024|unife", "2024|unipa", "2025|unife", "2025|unipa"]


def _requests(defs: Definitions, instance: DagsterInstance) -> dict[str, RunRequest]:
    sensor = defs.resolve_sensor_def("esse3_changes")
    result = sensor(build_sensor_context(instance=instance))
    if isinstance(result, SkipReason):
        return {}
    assert isinstance(result, SensorResult)
    return {str(r.partition_key): r for r in result.run_requests}


def _requested(defs: Definitions, instance: DagsterInstance) -> set[str]:
    return set(_requests(defs, instance))


def _touch_a_career(runtime: Runtime, year: int) -> None:
    """A change in Esse3 for one career of ``year`` at unife."""
    with runtime.esse3("unife").engine.begin() as conn:
        first = conn.execute(P01_STU.select().where(P01_STU.c.AA_ID == year)).first()
        conn.execute(
            update(P01_STU)
            .where(P01_STU.c.AA_ID == year, P01_STU.c.STU_ID == first.STU_ID)
            .values(DATA_MOD=NOW + dt.timedelta(minutes=5))
        )


def test_an_incremental_change_runs_its_steps_in_its_run_a_first_read_on_the_workers(
    runtime: Runtime,
) -> None:
    """Issue 25: in a Celery deployment a partition never read goes to the workers (a backfill's
    thousands of careers); a change of a partition already read carries a few careers and runs its
    steps in its own (warm) run process, with a run config the job's executor accepts."""
    settings = replace(runtime.settings, deploy=DeploySettings(executor="celery", batch_partitions=1))
    defs = build_definitions(settings, runtime)
    job = defs.resolve_job_def(JOB_NAME)
    assert job.executor_def.name == "celery_or_in_run"
    with DagsterInstance.ephemeral() as instance:
        first = _requests(defs, instance)
        assert len(first) == 4 and all(not r.run_config for r in first.values())

        assert job.execute_in_process(instance=instance, partition_key="2024|unife").success
        _touch_a_career(runtime, 2024)
        again = _requests(defs, instance)
        assert again["2024|unife"].run_config == steps_in_run()
        assert not again["2025|unife"].run_config  # still never read
    assert validate_run_config(job, steps_in_run())["execution"]["celery_or_in_run"] == {"steps_in_run": True}
    assert validate_run_config(job, {})["execution"]["celery_or_in_run"] == {"steps_in_run": False}


def test_a_deployments_asset_backfill_asks_for_a_run_of_a_universitys_years(runtime: Runtime) -> None:
    """Issue 25: in a Celery deployment the partitioned assets carry a multi-run backfill policy of the
    batch size, so the asset graph's *Materialize → partitions* plans range runs (which the executor
    hands to batches, etl.deploy.range_runs): a university's years in one. Without a deployment, or
    with batches of 1, Dagster's default: a run per partition."""
    deploy = replace(runtime.settings, deploy=DeploySettings(executor="celery", batch_partitions=7))
    graph = build_definitions(deploy, runtime).resolve_asset_graph()
    partitioned = [k for k in graph.materializable_asset_keys if graph.get(k).partitions_def]
    assert len(partitioned) >= 8
    assert {graph.get(k).backfill_policy for k in partitioned} == {BackfillPolicy.multi_run(7)}
    with DagsterInstance.ephemeral() as instance:
        wanted = [AssetKeyPartitionKey(k, f"{y}|unife") for k in partitioned for y in (2024, 2025)]
        [request] = build_run_requests_with_backfill_policies(wanted, graph, instance)
    assert is_range_run(request.tags) and request.partition_key is None
    assert (request.tags[ASSET_PARTITION_RANGE_START_TAG], request.tags[ASSET_PARTITION_RANGE_END_TAG]) == (
        "2024|unife", "2025|unife",
    )  # fmt: skip
    assert set(request.asset_selection or ()) == set(partitioned)
    assert not is_range_run({**request.tags, "dagster/partition": "2024|unife"})
    unbatched = replace(deploy, deploy=DeploySettings(executor="celery", batch_partitions=1))
    for settings in (runtime.settings, unbatched):
        graph = build_definitions(settings, runtime).resolve_asset_graph()
        assert {graph.get(k).backfill_policy for k in partitioned} == {None}


def test_a_backfill_ranged_by_year_still_makes_batches_of_each_universitys_years() -> None:
    """Dagster ranges a backfill of as many universities as years or more along one year, across
    universities: the range run holding a university's first year hands off all its years (in batches
    of the size), the others none; every targeted partition is handed exactly once."""
    universities, years = ("unife", "unimi", "unipa"), (2023, 2024, 2025)
    targeted = [Partition(y, u) for u in universities for y in years]
    ranges = [[p for p in targeted if p.academic_year == y] for y in years]
    for size, expected in ((7, [[[2023, 2024, 2025]], [], []]), (2, [[[2023, 2024]], [], [[2025]]])):
        owned = [owned_batches(r, targeted, size) for r in ranges]
        assert [o["unife"] for o in owned] == expected
        handed = [Partition(y, u) for o in owned for u, batches in o.items() for b in batches for y in b]
        assert sorted(handed, key=str) == sorted(targeted, key=str)
    # no backfill known (a range run of no backfill): its own partitions, a batch per university
    alone = [Partition(2025, "unipa"), Partition(2024, "unife"), Partition(2025, "unife")]
    assert owned_batches(alone, [], 7) == {"unife": [[2024, 2025]], "unipa": [[2025]]}


def test_one_universitys_esse3_down_leaves_the_others_changes_going(runtime: Runtime) -> None:
    unipa = replace(runtime.settings.ateneo("unipa"), esse3_url="sqlite:////nonexistent/esse3-unipa.sqlite")
    settings = replace(runtime.settings, atenei=(runtime.settings.ateneo("unife"), unipa))
    broken = Runtime(settings)
    try:
        with DagsterInstance.ephemeral() as instance:
            assert _requested(build_definitions(settings, broken), instance) == {
                "2024|unife",
                "2025|unife",
            }
    finally:
        broken.dispose()


def test_materialise_partition_then_sensor_sees_only_changes(runtime: Runtime) -> None:
    defs = build_definitions(runtime.settings, runtime)
    with DagsterInstance.ephemeral() as instance:
        assert _requested(defs, instance) == {"2024|unife", "2024|unipa", "2025|unife", "2025|unipa"}

        result = defs.resolve_job_def(JOB_NAME).execute_in_process(
            instance=instance, partition_key="2024|unife"
        )
        assert result.success
        [mat] = result.asset_materializations_for_node(
            "careers"
        )  # Router assets: tests/test_router_assets.py
        md = {k: v.value for k, v in mat.metadata.items()}
        assert md["inserted"] > 0 and md["updated"] == 0
        assert md["dagster/row_count"] == md["inserted"]
        with runtime.engine.connect() as conn:  # the metadata counts what the quarantine table holds
            held = conn.execute(
                text(
                    "SELECT COUNT(*) FROM quarantine WHERE institution = 'unife' AND academic_year = 2024 "
                    "AND stage = 'careers' AND resolved_at IS NULL"
                )
            ).scalar_one()
        assert md["quarantined"] == held
        checks = {
            (e.asset_key.to_user_string(), e.check_name): e.passed
            for e in result.get_asset_check_evaluations()
        }
        assert checks == {
            ("careers", "no_duplicate_careers"): True,
            ("careers", "quarantine_share"): True,
            ("qr_images", "qr_complete"): True,
            ("esi_assignments", "router_calls_complete"): True,  # every call answered
            ("esc_cards", "router_calls_complete"): True,
        }
        assert _requested(defs, instance) == {"2024|unipa", "2025|unife", "2025|unipa"}

        # A change in Esse3 for one career of 2024 at unife: that partition is requested again.
        _touch_a_career(runtime, 2024)
        assert "2024|unife" in _requested(defs, instance)


def test_a_refused_key_for_one_university_never_stops_the_other(
    any_state_runtime: Runtime,
    emulator: EmulatorProcess,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Issue 12: unife's key is refused (401): unife's first partition fails, its others are skipped
    and reported, unipa's all run; exit code 5 (the Router's) and one stderr line naming unife. With
    the key fixed, a rerun finishes unife: the Router holds exactly what the state DB says."""
    from etl.orchestrate import run_partitions
    from etl.partitions import Partition
    from etl.report import failures, progress

    monkeypatch.setenv("ESC_SYNC_ROUTER_KEY_UNIFE", "not-the-key")
    partitions = [Partition(y, u) for u in ("unife", "unipa") for y in (2024, 2025)]
    defs = build_definitions(any_state_runtime.settings, any_state_runtime)
    backfill = run_partitions(defs, DagsterInstance.ephemeral(), partitions, progress=progress)
    assert [r.partition.key for r in backfill.runs] == ["2024|unipa", "2025|unipa"]
    assert [(f.partition.key, f.skipped) for f in backfill.failures] == [
        ("2024|unife", False),
        ("2025|unife", True),
    ]
    assert "ESC_SYNC_ROUTER_KEY_UNIFE" in backfill.failures[0].message
    capsys.readouterr()
    assert failures(backfill) == ExitCode.ROUTER == 5
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("esc-sync: university unife:")
    assert "(2024|unife; 1 more partition(s) of unife not run)" in lines[0]

    monkeypatch.setenv("ESC_SYNC_ROUTER_KEY_UNIFE", KEYS["unife"])
    rerun = run_partitions(defs, DagsterInstance.ephemeral(), partitions[:2])
    assert not rerun.failures and len(rerun.runs) == 2
    at_router = emulator.stats()["organisations"]
    with any_state_runtime.engine.connect() as conn:
        for code, pic in PICS.items():
            local = card_store.registered_totals(conn, code)
            assert local["persons"] > 0 and local["cards"] > 0
            assert at_router[pic] == local | {"deleted_cards": 0}, code


def test_an_unreachable_router_stops_each_university_with_one_line(
    runtime: Runtime, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nothing listens at the Router's address: each university's first partition gives up after its
    retries (not after every call's), its others are skipped, exit code 5, one line each."""
    from etl.orchestrate import run_partitions
    from etl.partitions import Partition
    from etl.report import failures

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    router = replace(runtime.settings.router, url=f"http://127.0.0.1:{port}/esc-rest", max_retries=2)
    dead = Runtime(replace(runtime.settings, router=router))
    partitions = [Partition(y, u) for u in ("unife", "unipa") for y in (2024, 2025)]
    started = time.perf_counter()
    backfill = run_partitions(build_definitions(dead.settings, dead), DagsterInstance.ephemeral(), partitions)
    assert time.perf_counter() - started < 60
    assert not backfill.runs
    assert [(f.partition.key, f.skipped) for f in backfill.failures] == [
        ("2024|unife", False),
        ("2025|unife", True),
        ("2024|unipa", False),
        ("2025|unipa", True),
    ]
    message = backfill.failures[0].message
    assert f"the ESC Router at http://127.0.0.1:{port}/esc-rest is unreachable" in message
    capsys.readouterr()
    assert failures(backfill) == ExitCode.ROUTER
    assert len(capsys.readouterr().err.strip().splitlines()) == 2
    with dead.engine.connect() as conn:  # nothing recorded as sent: the rerun registers them all
        assert conn.execute(text("SELECT count(*) FROM persons WHERE state = 'registered'")).scalar_one() == 0
    dead.dispose()


def test_a_run_waiting_for_the_router_pool_says_for_whom_and_gives_up(
    runtime: Runtime, tmp_path: Path
) -> None:
    """Two live runs hold both esc_router slots: the next run says once what it waits for, and
    after [runs] wait_timeout_s stops every partition with one line (exit 7) instead of hanging.
    When a holder frees its slot in time, the wait ends and the run goes on."""
    from etl.orchestrate import ensure_instance, run_partitions, wait_for_router_pool
    from etl.partitions import Partition
    from etl.report import failures

    settings = replace(runtime.settings, home=tmp_path / "esc-home")
    instance = ensure_instance(settings)
    storage = instance.event_log_storage
    storage.set_concurrency_slots(ROUTER_POOL, 2)
    for holder in ("a" * 32, "b" * 32):
        storage.claim_concurrency_slot(ROUTER_POOL, holder, "esc_cards")
    said: list[str] = []
    partitions = [Partition(y, "unife") for y in (2024, 2025)]
    started = time.monotonic()
    backfill = run_partitions(
        build_definitions(settings, runtime), instance, partitions, say=said.append, wait_timeout_s=1.5
    )
    assert 1.5 <= time.monotonic() - started < 20
    assert said == [
        f"waiting for a slot of the Router pool {ROUTER_POOL} (limit 2), held by run aaaaaaaa, run bbbbbbbb "
        "(giving up after 1.5s)"
    ]
    assert not backfill.runs and [f.skipped for f in backfill.failures] == [False, True]
    assert backfill.failures[0].message.startswith("gave up after 1.5s waiting for a slot of the Router pool")
    assert failures(backfill) == ExitCode.BUSY == 7

    threading.Timer(0.5, storage.free_concurrency_slots_for_run, ("a" * 32,)).start()
    started = time.monotonic()
    wait_for_router_pool(instance, 30, said.append, poll_s=0.1)
    assert time.monotonic() - started < 10 and len(said) == 2


def test_exit_code_names_the_kind_of_failure_and_mixed_kinds_are_3() -> None:
    from etl.orchestrate import Backfill, PartitionFailure, failure_message
    from etl.partitions import Partition
    from etl.report import failures

    gone = OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly\nDETAIL"))
    assert failure_message(gone) == (
        "state DB error: server closed the connection unexpectedly (re-run once it is back)",
        ExitCode.DATABASE,
    )
    disk = PartitionFailure(Partition(2024, "unife"), "No space left on device", ExitCode.FILES)
    busy = PartitionFailure(Partition(2025, "unife"), "partition 2025|unife is being run by", ExitCode.BUSY)
    assert failures(Backfill([], [])) == ExitCode.OK
    assert failures(Backfill([], [disk])) == ExitCode.FILES
    assert failures(Backfill([], [disk, busy])) == ExitCode.MIXED == 3


def test_a_full_disk_is_one_line_naming_the_file() -> None:
    import errno

    from etl.orchestrate import failure_message

    full = OSError(errno.ENOSPC, "No space left on device", "/srv/esc/exports/unife/2025/x.parquet.tmp")
    message, code = failure_message(full)
    assert message.startswith("No space left on device on /srv/esc/exports/unife/2025/x.parquet.tmp")
    assert "\n" not in message and code == ExitCode.FILES == 6
    assert failure_message(ValueError("Mario Rossi")) == (
        "unexpected ValueError (ESC_SYNC_DEBUG=1 shows the traceback)",
        ExitCode.UNEXPECTED,
    )


def test_sensor_ticks_read_the_processs_own_instance(
    runtime: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tick the daemon asks of the code server names the instance by reference; Dagster builds a new
    instance from it for a sensor that takes resources (~65 CPU-ms of storages and PostgreSQL
    connections, every tick). Ours take none and read the process's kept instance."""
    defs = build_definitions(runtime.settings, runtime)
    sensors = [defs.resolve_sensor_def(name) for name in ("esse3_changes", "unfinished_work")]
    assert all(not s.required_resource_keys for s in sensors)
    built: list[object] = []
    real = DagsterInstance.from_ref
    monkeypatch.setattr(DagsterInstance, "from_ref", staticmethod(lambda ref: built.append(ref) or real(ref)))
    (tmp_path / "dagster").mkdir()
    with DagsterInstance.local_temp(str(tmp_path / "dagster")) as instance:
        for _ in range(3):
            with build_sensor_context(instance_ref=instance.get_ref()) as context:
                assert sensors[1].evaluate_tick(context).skip_message == "nothing left"
        assert len(built) == 1
