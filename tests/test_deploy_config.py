"""The deployment's configuration (issue 13), without services: the [deploy] section, the instance
file `esc-sync deploy init` writes, URLs from the environment, and the one-line refusals."""

from __future__ import annotations

import hashlib
import inspect
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from dagster import (
    AssetCheckEvaluation,
    AssetCheckKey,
    AssetCheckResult,
    AssetCheckSpec,
    AssetMaterialization,
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    MaterializeResult,
    RunsFilter,
    StaticPartitionsDefinition,
    asset,
    materialize,
)
from dagster._core.instance.config import dagster_instance_config  # validates without connecting
from dagster._core.utils import make_new_run_id
from dagster._utils.tags import TagConcurrencyLimitsCounter
from dagster_postgres import PostgresEventLogStorage
from sqlalchemy import create_engine, event, text

from etl.batches import BATCH_JOB, BATCH_KIND, KIND_TAG, UNIVERSITY_TAG, Batch, build_batch_job
from etl.config import DeploySettings, parse_settings
from etl.demo.config import demo_config_toml
from etl.deploy.env import broker_url, dagster_pg_url, redacted
from etl.deploy.instance import INSTITUTION_TAG, PARTITION_TAG, write_instance
from etl.deploy.storage import (
    PooledPostgresEventLogStorage,
    PooledPostgresRunStorage,
    PooledPostgresScheduleStorage,
)
from etl.errors import ConfigError, ExitCode

REPO = Path(__file__).resolve().parents[1]


def _settings(tmp_path: Path, deploy: str, database_url: str = "postgresql+psycopg://u@db/state"):
    raw = tomllib.loads(demo_config_toml() + deploy)
    return parse_settings(raw, home=tmp_path, database_url=database_url, config_path=tmp_path / "c.toml")


def test_deploy_section_defaults_and_bad_values(tmp_path: Path) -> None:
    assert _settings(tmp_path, "").deploy is None  # no section: not a deployment
    assert _settings(tmp_path, "\n[deploy]\n").deploy == DeploySettings()
    custom = _settings(
        tmp_path,
        '\n[deploy]\nexecutor = "multiprocess"\nruns_per_university = 1\n'
        "batch_partitions = 3\nbatch_runs = 2\nrun_host = false\n",
    ).deploy
    assert custom == DeploySettings(
        executor="multiprocess", runs_per_university=1, batch_partitions=3, batch_runs=2, run_host=False
    )
    for bad, expected in [
        ('executor = "k8s"', "deploy: field executor: 'k8s' is not one of in_process, multiprocess, celery"),
        ("max_concurrent_runs = 0", "deploy: field max_concurrent_runs: 0 must be a positive integer"),
        ("workers = 3", "deploy: unknown key"),
        ('run_host = "no"', "deploy: field run_host: 'no' must be true or false"),
        ("batch_partitions = 0", "deploy: field batch_partitions: 0 must be a positive integer"),
        ("batch_runs = -1", "deploy: field batch_runs: -1 must be a positive integer"),
    ]:
        with pytest.raises(ConfigError, match=expected.replace("(", r"\(")):
            _settings(tmp_path, f"\n[deploy]\n{bad}\n")


def test_the_instance_is_dagsters_own_queue_monitoring_retries_and_pool(tmp_path: Path) -> None:
    deploy = DeploySettings(max_concurrent_runs=12, runs_per_university=3, router_steps=6)
    written = write_instance(tmp_path / "dagster", deploy)
    assert [p.name for p in written] == ["dagster.yaml", "workspace.yaml"]
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in written)
    assert (tmp_path / "dagster").stat().st_mode & 0o777 == 0o700
    config = yaml.safe_load(written[0].read_text())
    for storage in ("run_storage", "event_log_storage", "schedule_storage"):
        assert config[storage]["config"]["postgres_url"] == {"env": "ESC_SYNC_DAGSTER_PG_URL"}
    assert config["compute_logs"]["class"] == "NoOpComputeLogManager"  # no watcher processes per step
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    runs = config["concurrency"]["runs"]
    assert runs["max_concurrent_runs"] == 12
    assert runs["tag_concurrency_limits"] == [
        {"key": INSTITUTION_TAG, "value": {"applyLimitPerUniqueValue": True}, "limit": 3},
        {"key": UNIVERSITY_TAG, "value": {"applyLimitPerUniqueValue": True}, "limit": 3},  # batches too
        {"key": KIND_TAG, "value": BATCH_KIND, "limit": 4},  # batches in flight
        {"key": PARTITION_TAG, "value": {"applyLimitPerUniqueValue": True}, "limit": 1},
    ]
    assert config["concurrency"]["pools"]["default_limit"] == 6
    assert config["run_monitoring"]["enabled"] and config["run_retries"]["enabled"]
    assert config["run_retries"]["retry_on_asset_or_op_failure"] is False
    # Dagster itself accepts it (schema and the concurrency rules), and nothing secret is in it
    dagster_instance_config(str(tmp_path / "dagster"))
    assert "password" not in written[0].read_text().lower()


def test_the_queue_holds_batches_beyond_batch_runs_and_never_a_single_change(tmp_path: Path) -> None:
    settings = _settings(tmp_path, "\n[deploy]\nbatch_runs = 1\n")
    assert settings.deploy is not None
    config = yaml.safe_load(write_instance(tmp_path / "dagster", settings.deploy)[0].read_text())
    limits = config["concurrency"]["runs"]["tag_concurrency_limits"]
    batch_job = build_batch_job(settings)

    def batch(university: str) -> DagsterRun:  # tagged as the sensor daemon tags a run it creates
        request = Batch(university, ()).run_request().with_resolved_tags_and_config(batch_job, [], None)
        tags = {**batch_job.run_tags, **request.tags}
        return DagsterRun(job_name=BATCH_JOB, run_id=make_new_run_id(), tags=tags)

    change = {PARTITION_TAG: "2025|unife", INSTITUTION_TAG: "unife", UNIVERSITY_TAG: "unife"}
    single = DagsterRun(job_name="esc_sync", run_id=make_new_run_id(), tags=change)
    # the queue's counter, as its daemon builds it from the runs in progress
    queue = TagConcurrencyLimitsCounter(limits, [batch("unife")])
    assert queue.is_blocked(batch("unipa"))  # another university's batch waits for a worker
    assert not queue.is_blocked(single)  # a finalised enrolment does not wait behind backfills
    assert not TagConcurrencyLimitsCounter(limits, []).is_blocked(batch("unipa"))


def test_the_per_university_limit_reads_the_tag_dagster_puts_on_partitioned_runs() -> None:
    from dagster._core.storage.tags import PARTITION_NAME_TAG, get_multidimensional_partition_tag

    assert get_multidimensional_partition_tag("institution") == INSTITUTION_TAG
    assert PARTITION_NAME_TAG == PARTITION_TAG


def test_urls_come_from_the_environment_and_never_reach_a_log_whole() -> None:
    env = {"ESC_SYNC_DAGSTER_PG_URL": "postgresql+psycopg://dagster:s3cret@db:5432/dagster"}
    assert dagster_pg_url(env) == "postgresql+psycopg2://dagster:s3cret@db:5432/dagster"
    assert redacted(dagster_pg_url(env)) == "postgresql+psycopg2://dagster:***@db:5432/dagster"
    assert redacted("pyamqp://guest@127.0.0.1:5672//") == "pyamqp://guest@127.0.0.1:5672//"
    with pytest.raises(ConfigError, match="ESC_SYNC_DAGSTER_PG_URL is not set"):
        dagster_pg_url({})
    with pytest.raises(ConfigError, match="not a PostgreSQL URL"):
        dagster_pg_url({"ESC_SYNC_DAGSTER_PG_URL": "sqlite:///x.db"})
    assert broker_url({}) == "pyamqp://guest@127.0.0.1:5672//"
    assert broker_url({"ESC_SYNC_BROKER_URL": "amqps://esc:pw@mq:5671//"}) == "amqps://esc:pw@mq:5671//"
    with pytest.raises(ConfigError, match="redis broker, use RabbitMQ") as refused:
        broker_url({"ESC_SYNC_BROKER_URL": "redis://:hunter2@127.0.0.1:6379/0"})
    assert "hunter2" not in str(refused.value)


def _cli(tmp_path: Path, *args: str, toml_extra: str = "", **env: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "esc-sync.toml").write_text(demo_config_toml() + toml_extra, encoding="utf-8")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("ESC_SYNC_", "DAGSTER_"))}
    base |= {"ESC_SYNC_HOME": str(tmp_path), "ESC_SYNC_CONFIG": str(tmp_path / "esc-sync.toml")} | env
    return subprocess.run(
        [sys.executable, "-m", "etl.cli", *args],
        env=base,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("toml_extra", "env", "expected", "code"),
    [
        ("", {}, "no [deploy] section: add one to deploy", ExitCode.CONFIG),
        ("\n[deploy]\n", {}, "a deployment keeps its state DB on PostgreSQL", ExitCode.CONFIG),
        (
            "\n[deploy]\n",
            {"ESC_SYNC_DATABASE_URL": "postgresql+psycopg://u@127.0.0.1:9/x"},
            "ESC_SYNC_DAGSTER_PG_URL is not set",
            ExitCode.CONFIG,
        ),
        (
            "\n[deploy]\n",
            {
                "ESC_SYNC_DATABASE_URL": "postgresql+psycopg://u@127.0.0.1:9/x",
                "ESC_SYNC_DAGSTER_PG_URL": "postgresql://u@127.0.0.1:9/dagster",
                "ESC_SYNC_BROKER_URL": "redis://:hunter2@127.0.0.1:6379/0",
            },
            "ESC_SYNC_BROKER_URL: redis broker, use RabbitMQ",
            ExitCode.CONFIG,
        ),
    ],
)
def test_deploy_commands_refuse_an_incomplete_setup_in_one_line(
    tmp_path: Path, toml_extra: str, env: dict[str, str], expected: str, code: ExitCode
) -> None:
    for command in (["deploy", "init"], ["worker"], ["serve"]):
        done = _cli(tmp_path, *command, toml_extra=toml_extra, **env)
        assert done.returncode == code, (command, done.stderr)
        assert done.stderr.count("\n") == 1 and expected in done.stderr, (command, done.stderr)


def test_a_worker_without_its_broker_says_so_in_one_line(tmp_path: Path) -> None:
    done = _cli(
        tmp_path, "worker", toml_extra="\n[deploy]\n",
        ESC_SYNC_DATABASE_URL="postgresql+psycopg://u@127.0.0.1:9/x",
        ESC_SYNC_DAGSTER_PG_URL="postgresql://dagster:s3cret@127.0.0.1:9/dagster",
        ESC_SYNC_BROKER_URL="pyamqp://esc:hunter2@127.0.0.1:9//",
    )  # fmt: skip
    assert done.returncode == ExitCode.SERVICE, done.stderr
    assert done.stderr.startswith("esc-sync: broker pyamqp://esc:***@127.0.0.1:9// unreachable")
    assert "hunter2" not in done.stderr and done.stderr.count("\n") == 1


def test_instance_loads_on_postgresql(tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The written instance connects: run storage on PostgreSQL, the queued coordinator."""
    monkeypatch.setenv("ESC_SYNC_DAGSTER_PG_URL", dagster_pg_url({"ESC_SYNC_DAGSTER_PG_URL": pg_url}))
    write_instance(tmp_path / "dagster", DeploySettings())
    with DagsterInstance.from_config(str(tmp_path / "dagster")) as instance:
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        assert isinstance(instance.run_storage, PooledPostgresRunStorage)
        assert instance.run_monitoring_enabled and instance.run_retries_enabled
        assert isinstance(instance.event_log_storage, PooledPostgresEventLogStorage)
        assert isinstance(instance.schedule_storage, PooledPostgresScheduleStorage)


def test_the_event_log_run_and_schedule_storage_keep_their_connection(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dagster-postgres connects anew for every statement; the deployment's event log, run and schedule
    storage connect once each, what they store is all there, and a connection the server dropped is
    replaced, not an error."""
    monkeypatch.setenv("ESC_SYNC_DAGSTER_PG_URL", dagster_pg_url({"ESC_SYNC_DAGSTER_PG_URL": pg_url}))
    write_instance(tmp_path / "dagster", DeploySettings())
    with DagsterInstance.from_config(str(tmp_path / "dagster")) as instance:
        connects: list[object] = []
        run_connects: list[object] = []
        event.listen(instance.event_log_storage._engine, "connect", lambda *_: connects.append(1))
        event.listen(instance.run_storage._engine, "connect", lambda *_: run_connects.append(1))
        schedules = instance.schedule_storage
        assert schedules is not None
        schedule_connects: list[object] = []
        event.listen(schedules._engine, "connect", lambda *_: schedule_connects.append(1))
        run = instance.add_run(DagsterRun(job_name="esc_sync", run_id=make_new_run_id()))
        for i in range(20):
            instance.report_engine_event(f"step {i}", run)
            instance.add_run_tags(run.run_id, {f"esc_sync/test{i}": "1"})
            assert not instance.all_instigator_state()  # what the daemon's loops read every second
        assert len(instance.all_logs(run.run_id)) == 20
        assert len(instance.get_run_by_id(run.run_id).tags) >= 20
        assert len(connects) == 1 and len(run_connects) == 1 and len(schedule_connects) == 1
        admin = create_engine(pg_url)
        with admin.begin() as conn:  # as a server restart or an idle timeout would
            dropped = conn.execute(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            ).scalar_one()
        admin.dispose()
        assert dropped >= 1
        instance.report_engine_event("after the drop", run)
        assert len(instance.all_logs(run.run_id)) == 21
        assert len(connects) == 2


def test_the_storages_ask_the_catalog_for_their_columns_and_tables_once(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dagster inspects the runs table's columns for every read of runs (the queue's loop: twice a
    second), the asset_keys table's for every asset event, and whether the asset check table exists for
    every check evaluation; the deployment's storages ask once."""
    monkeypatch.setenv("ESC_SYNC_DAGSTER_PG_URL", dagster_pg_url({"ESC_SYNC_DAGSTER_PG_URL": pg_url}))
    write_instance(tmp_path / "dagster", DeploySettings())
    with DagsterInstance.from_config(str(tmp_path / "dagster")) as instance:
        catalog: list[str] = []
        for storage in (instance.run_storage, instance.event_log_storage):
            event.listen(
                storage._engine, "before_cursor_execute",  # type: ignore[attr-defined]
                lambda _c, _cur, sql, *_: catalog.append(sql) if "pg_catalog" in sql else None,
            )  # fmt: skip
        run = instance.add_run(DagsterRun(job_name="esc_sync", run_id=make_new_run_id()))
        cards = AssetMaterialization("cards").asset_key
        for i in range(10):  # what the queue, the sensors and the runs read and write all day
            assert [
                r.dagster_run.run_id for r in instance.get_run_records(RunsFilter(job_name="esc_sync"))
            ] == [run.run_id]
            instance.report_runless_asset_event(AssetMaterialization("cards", partition=f"2025|u{i}"))
            assert instance.get_latest_materialization_event(cards) is not None
            check = AssetCheckEvaluation(cards, "cards_complete", passed=True, partition=f"2025|u{i}")
            instance.report_runless_asset_event(check)
        checks = instance.event_log_storage.get_asset_check_execution_history(check.asset_check_key, 20)
        assert len(checks) == 10
        assert 0 < len(catalog) <= 4, len(catalog)  # once each (13 without: the check table at each check)


def test_a_worker_keeps_one_dagster_instance_for_all_its_steps(tmp_path: Path) -> None:
    """dagster-celery's step task asks for an instance every step: the worker's app hands back the
    same one for the same instance, another for another."""
    from dagster._core.instance.ref import InstanceRef
    from dagster_celery import tasks

    import etl.deploy.worker_app  # noqa: F401  # installs the kept instance

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = InstanceRef.from_dir(str(tmp_path / "a")), InstanceRef.from_dir(str(tmp_path / "b"))
    instance = tasks.DagsterInstance.from_ref(first)
    assert isinstance(instance, DagsterInstance)
    assert tasks.DagsterInstance.from_ref(InstanceRef.from_dir(str(tmp_path / "a"))) is instance
    assert tasks.DagsterInstance.from_ref(second) is not instance


def test_the_event_log_stores_a_runs_events_without_notify(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The deployment's event log stores events as dagster-postgres does, asset events' records, tags
    and checks included, without the NOTIFY nothing listens to."""
    monkeypatch.setenv("ESC_SYNC_DAGSTER_PG_URL", dagster_pg_url({"ESC_SYNC_DAGSTER_PG_URL": pg_url}))
    write_instance(tmp_path / "dagster", DeploySettings())

    @asset(
        partitions_def=StaticPartitionsDefinition(["2025|unife", "2025|unipa"]),
        check_specs=[AssetCheckSpec("complete", asset="cards")],
    )
    def cards() -> MaterializeResult:
        return MaterializeResult(
            metadata={"written": 3}, check_results=[AssetCheckResult(check_name="complete", passed=True)]
        )

    with DagsterInstance.from_config(str(tmp_path / "dagster")) as instance:
        sent: list[str] = []
        storage = instance.event_log_storage
        assert isinstance(storage, PooledPostgresEventLogStorage)
        event.listen(storage._engine, "before_cursor_execute", lambda _c, _cur, sql, *_: sent.append(sql))
        for partition in ("2025|unife", "2025|unipa"):
            assert materialize([cards], instance=instance, partition_key=partition).success
        assert sent and not [sql for sql in sent if "NOTIFY" in sql.upper()]
        key = cards.key
        latest = instance.get_latest_materialization_event(key)
        assert latest is not None and latest.asset_materialization is not None
        assert latest.asset_materialization.partition == "2025|unipa"
        assert latest.asset_materialization.metadata["written"].value == 3
        assert instance.get_materialized_partitions(key) == {"2025|unife", "2025|unipa"}
        (record,) = instance.get_asset_records([key])
        assert record.asset_entry.last_materialization_record is not None
        assert storage.get_event_tags_for_asset(key)  # the data version tags of each materialisation
        runs = instance.get_runs()  # newest first
        assert [r.status for r in runs] == [DagsterRunStatus.SUCCESS] * 2
        history = storage.get_asset_check_execution_history(AssetCheckKey(key, "complete"), 10)
        assert [(h.run_id, h.status.value) for h in history] == [(r.run_id, "SUCCEEDED") for r in runs]
        assert any(e.is_dagster_event and e.dagster_event_type == DagsterEventType.RUN_SUCCESS
                   for e in instance.all_logs(runs[0].run_id))  # fmt: skip


def test_the_event_log_store_event_is_dagster_postgres_s_as_read() -> None:
    """PooledPostgresEventLogStorage.store_event is dagster-postgres's own less the NOTIFY: when theirs
    changes (a new pin), it must be read again."""
    source = inspect.getsource(PostgresEventLogStorage.store_event)
    assert hashlib.sha256(source.encode()).hexdigest()[:16] == "4a2e37e5871bf2c8", source
