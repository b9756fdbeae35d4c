"""The `esc-sync` command as an operator runs it (real subprocesses): one clear line on bad input,
no traceback, nothing half-written; the demo is idempotent and `--mutate` syncs only what changed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select

from etl.demo.config import demo_config_toml
from etl.errors import ExitCode
from etl.store.models import Career

ESC_SYNC = [sys.executable, "-m", "etl.cli"]


def run(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("ESC_SYNC_", "DAGSTER_"))}
    full_env.update({"ESC_SYNC_HOME": str(home), **env})
    return subprocess.run(
        [*ESC_SYNC, *args],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=Path(__file__).resolve().parents[1],
    )


def assert_one_line_error(
    p: subprocess.CompletedProcess[str], *needles: str, code: ExitCode = ExitCode.CONFIG
) -> None:
    assert p.returncode == code, p.stderr
    assert "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_broken_config_stops_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "esc-sync.toml").write_text(demo_config_toml().replace('pic = "999978433"', 'pic = "9999"'))
    p = run(tmp_path, "sync")
    assert_one_line_error(p, "university unife", "field pic")
    assert not (tmp_path / "state.sqlite").exists()  # nothing written


def test_unreachable_state_db_stops_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "esc-sync.toml").write_text(demo_config_toml())
    p = run(tmp_path, "status", ESC_SYNC_DATABASE_URL="postgresql+psycopg://esc:hunter2@127.0.0.1:1/state")
    assert_one_line_error(p, "state DB", "cannot connect", code=ExitCode.DATABASE)
    assert "hunter2" not in p.stderr


def test_missing_esse3_table_stops_with_one_line_and_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "esc-sync.toml").write_text(demo_config_toml())
    create_engine(f"sqlite:///{tmp_path / 'esse3-unife.sqlite'}").connect().close()  # empty database
    assert run(tmp_path, "db", "upgrade").returncode == 0
    p = run(tmp_path, "materialize", "--partition", "2024|unife")
    assert_one_line_error(p, "university unife: Esse3", "P01_STU", code=ExitCode.DATABASE)
    engine = create_engine(f"sqlite:///{tmp_path / 'state.sqlite'}")
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Career)).scalar_one() == 0


def test_bad_partition_argument(tmp_path: Path) -> None:
    (tmp_path / "esc-sync.toml").write_text(demo_config_toml())
    assert run(tmp_path, "db", "upgrade").returncode == 0
    assert_one_line_error(run(tmp_path, "materialize", "--partition", "2024-unife"), "partition key")
    assert_one_line_error(run(tmp_path, "materialize", "--partition", "2024|nowhere"), "unknown university")
    assert_one_line_error(run(tmp_path, "materialize", "--partition", "1999|unife"), "academic year 1999")


@pytest.mark.slow
def test_demo_twice_then_mutate(tmp_path: Path) -> None:
    first = run(tmp_path, "demo", "--students", "600")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "Summary" in first.stdout and "[14/14]" in first.stdout
    assert "Traceback" not in first.stderr
    second = run(tmp_path, "demo")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Nothing changed" in second.stdout
    mutated = run(tmp_path, "demo", "--mutate")
    assert mutated.returncode == 0, mutated.stderr[-3000:]
    n = int(re.search(r"Materialising (\d+) partition", mutated.stdout).group(1))
    touched = re.findall(r"mutated demo Esse3 of \w+: years touched \[([\d, ]*)\]", mutated.stdout)
    assert n == sum(len(t.split(",")) for t in touched if t)  # exactly the partitions that changed
    assert " upd" in mutated.stdout


@pytest.mark.slow
def test_demo_leaves_no_personal_data_in_dagster_storage_and_only_private_files(tmp_path: Path) -> None:
    """Issue 11: Dagster's run and event storage hold counts, reasons and keys, never a name, an
    e-mail or a matricola; every file esc-sync writes is 0600 and every folder 0700."""
    import sqlite3

    p = run(tmp_path, "demo", "--students", "300")
    assert p.returncode == 0, p.stderr[-3000:]
    # private files: the umask is set before anything is written
    loose = [
        (str(f.relative_to(tmp_path)), oct(f.stat().st_mode & 0o777))
        for f in [tmp_path, *tmp_path.rglob("*")]
        if f.stat().st_mode & 0o077
    ]
    assert not loose, loose[:10]
    needles: set[str] = set()
    for esse3 in tmp_path.glob("esse3-*.sqlite"):
        with sqlite3.connect(esse3) as db:
            for nome, cognome, email, ate in db.execute(
                'SELECT "NOME", "COGNOME", "EMAIL", "EMAIL_ATE" FROM "P01_ANAPER"'
            ):
                needles |= {v for v in (email, ate) if v}
                if nome and cognome:
                    needles.add(f"{nome} {cognome}")
            needles |= {m for (m,) in db.execute('SELECT "MATRICOLA" FROM "P01_STU"') if m and len(m) >= 5}
    assert len(needles) > 500
    dagster = tmp_path / "dagster"
    stored = [f for f in dagster.rglob("*") if f.is_file()]
    assert any(f.suffix == ".db" for f in stored)
    # A matricola is digits: count it only as a whole token (not inside a number, a hash or a time).
    numbers = {n for n in needles if n.isdigit()}
    words = [n.encode() for n in needles - numbers]
    leaks = set()
    for f in stored:
        data = f.read_bytes()
        tokens = {t.decode() for t in re.findall(rb"(?<![\w.])\d{5,}(?![\w.])", data)}
        leaks |= {(f.name, n) for n in tokens & numbers} | {(f.name, w.decode()) for w in words if w in data}
    assert not leaks, sorted(leaks)[:5]


def test_asyncio_stays_quiet_about_an_interrupt_landing_in_a_socket_write() -> None:
    """An interrupt raised inside a transport's write is logged by asyncio as a "Fatal write error"
    with a traceback; the CLI's one line says what happened instead. Other errors are still logged."""
    import logging

    from etl.cli import _not_an_interrupt

    def record(exc: BaseException) -> logging.LogRecord:
        return logging.LogRecord(
            "asyncio", logging.ERROR, __file__, 1, "Fatal write error", (), (type(exc), exc, None)
        )

    assert not _not_an_interrupt(record(KeyboardInterrupt()))
    assert not _not_an_interrupt(record(BaseExceptionGroup("calls", [KeyboardInterrupt()])))
    assert _not_an_interrupt(record(ConnectionResetError()))
    plain = logging.LogRecord("asyncio", logging.ERROR, __file__, 1, "Task was destroyed", (), None)
    assert _not_an_interrupt(plain)
