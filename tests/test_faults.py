"""An operator's bad day through the real command (issue 12): the disk fills while exporting, the
state DB's PostgreSQL drops every connection mid-run. Each ends with one line per failed partition
and the exit code of its kind; a plain rerun then converges (the Router equal to the local state,
nobody registered twice)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from etl.emulator import FaultConfig, start_emulator
from etl.errors import ExitCode
from etl.store.db import make_engine
from etl.store.migrate import upgrade
from tests.test_router_reliability import (
    INST,
    KEY,
    PIC,
    REPO,
    assert_router_equals_local,
    local_state,
    make_esse3,
    sync_env,
    write_config,
)

pytestmark = pytest.mark.slow  # end to end, seconds to minutes each: `make test-quick` leaves them out

COMMAND = [sys.executable, "-m", "etl.cli", "materialize", "--institution", INST]


def _run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        COMMAND, env=env, cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300
    )


def _mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)])
    return done.returncode == 0


def _free_bytes(where: Path) -> int:
    st = os.statvfs(where)
    return st.f_bavail * st.f_frsize


def test_a_full_disk_while_exporting_is_one_line_per_partition_and_a_rerun_finishes(
    tmp_path: Path, state_url: str
) -> None:
    home = tmp_path / "home"
    exports = home / "exports"
    if not _mount_tmpfs(exports, "4m"):
        pytest.skip("needs root to mount a small tmpfs (CI runs as root)")
    try:
        make_esse3(home, students=300)
        engine = make_engine(state_url)
        upgrade(engine)
        filler = exports / "filler"
        filler.write_bytes(b"\0" * (_free_bytes(exports) - 16 * 1024))  # 16 KiB left: no export fits
        with start_emulator({KEY: PIC}) as emu:
            write_config(home, emu.url)
            env = sync_env(home, state_url)
            full = _run(env)
            lines = full.stderr.strip().splitlines()
            assert full.returncode == ExitCode.FILES, full.stderr[-2000:]
            assert lines and all(
                line.startswith(f"esc-sync: No space left on device on {exports}/") for line in lines
            ), lines
            assert "(nothing half-written: re-run once fixed)" in lines[0]
            left = [p.name for p in exports.rglob(".*.part")]
            assert not left, left  # no partial file: a half export is never left for a vendor
            filler.unlink()
            done = _run(env)
            assert done.returncode == 0, done.stderr[-2000:]
            assert "Traceback" not in full.stderr + done.stderr
            assert list(exports.glob(f"{INST}/*/*.parquet")) and list(exports.glob(f"{INST}/*/*.zip"))
            assert_router_equals_local(emu.url, local_state(engine), emu)
        engine.dispose()
    finally:
        subprocess.run(["umount", "-l", str(exports)], check=False)


def test_postgresql_dropping_every_connection_mid_run_then_a_rerun_converges(
    tmp_path: Path, pg_url: str
) -> None:
    """What a PostgreSQL restart looks like to esc-sync: the server ends every connection of the
    state DB while Router steps are running, three times. Each partition hit fails with one line
    (exit 4) or, if it was between transactions, reconnects and goes on; the rerun finishes it all."""
    home = tmp_path / "home"
    make_esse3(home, students=300)
    engine = make_engine(pg_url)
    upgrade(engine)
    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    dropped = 0

    def drop_all() -> None:
        nonlocal dropped
        with admin.connect() as conn:
            dropped += conn.execute(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            ).scalar_one()

    with start_emulator({KEY: PIC}, faults=FaultConfig(latency_ms=150)) as emu:
        write_config(home, emu.url)
        env = sync_env(home, pg_url)
        proc = subprocess.Popen(
            COMMAND, env=env, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        while emu.stats()["requests"] == 0 and proc.poll() is None:  # Dagster loaded, steps running
            time.sleep(0.05)
        while proc.poll() is None:  # the server drops everything every 0.4 s until the run ends
            drop_all()
            time.sleep(0.4)
        out, err = proc.communicate(timeout=300)
        assert dropped >= 3
        lines = err.strip().splitlines()
        assert proc.returncode in (ExitCode.OK, ExitCode.DATABASE), err[-3000:]
        assert "Traceback" not in err, err[-3000:]
        assert all(line.startswith("esc-sync: state DB error: ") for line in lines), lines
        assert err.count("\n") == out.count("FAILED")  # one line for each partition that failed
        done = _run(env)
        assert done.returncode == 0, done.stderr[-2000:]
        assert_router_equals_local(emu.url, local_state(engine), emu)
    admin.dispose()
    engine.dispose()


def test_sync_goes_on_when_one_universitys_esse3_cannot_be_read(tmp_path: Path) -> None:
    """unipa's Esse3 has no tables: `sync` says so in one line, runs unife's changes, and exits 4."""
    home = tmp_path / "home"
    make_esse3(home, students=100)
    (home / "esse3-unipa.sqlite").write_bytes(b"")  # an empty database: no Esse3 tables
    state_url = f"sqlite:///{tmp_path / 'state.sqlite'}"
    engine = make_engine(state_url)
    upgrade(engine)
    engine.dispose()
    with start_emulator({KEY: PIC}) as emu:
        write_config(home, emu.url)
        done = subprocess.run(
            [sys.executable, "-m", "etl.cli", "sync"], env=sync_env(home, state_url), cwd=REPO,
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "unipa" in lines[0] and "Traceback" not in done.stderr, done.stderr
    assert "running 7 partition(s)" in done.stdout and "|unife" in done.stdout
    assert "FAILED" not in done.stdout
    assert done.returncode == ExitCode.DATABASE
