"""What users install: the wheel, built from this checkout and installed into a fresh virtualenv outside
it (README Production step 1, `pip install -c constraints.txt .`). From there `esc-sync demo`, `db
upgrade` and `deploy init` must work: the migrations and the Esse3 SQL ship inside the package.

Also a site's own SQL in `[esse3] sql_dir`, which is how a wheel's user adapts a statement."""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from etl.demo.generate import generate
from etl.resources.esse3 import Esse3Source, sql
from tests.deployment import deploy_toml
from tests.fixtures.wallet import make_chain

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `esc-sync` command of a fresh virtualenv holding the wheel (and its pinned dependencies):
    the one `make wheel` installed (`.ci/run`), or one built here."""
    if prepared := os.environ.get("ESC_SYNC_TEST_WHEEL_VENV"):
        command = Path(prepared) / "bin" / "esc-sync"
        assert command.exists(), f"ESC_SYNC_TEST_WHEEL_VENV={prepared} holds no esc-sync: run `make wheel`"
        assert not command.resolve().is_relative_to(REPO), "keep it outside the checkout"
        return command
    where = tmp_path_factory.mktemp("wheel")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(where), str(REPO)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    [wheel] = where.glob("esc_sync-*.whl")
    venv = where / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "-c", str(REPO / "constraints.txt"),
         str(wheel)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert pip.returncode == 0, pip.stderr[-2000:]
    return venv / "bin" / "esc-sync"


def run(command: Path, cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("ESC_SYNC_", "DAGSTER_", "PYTHON"))}
    return subprocess.run(
        [str(command), *args], cwd=cwd, env=clean | env, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
@pytest.mark.postgres
def test_the_installed_wheel_runs_the_demo_migrates_and_deploys(
    installed: Path, tmp_path: Path, pg_url: str, dagster_pg: str, broker: str
) -> None:
    home = tmp_path / "home"
    demo = run(installed, tmp_path, "demo", "--students", "200", ESC_SYNC_HOME=str(home))
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-2000:]
    assert "Router beside local state" in demo.stdout and "MISMATCH" not in demo.stdout
    # the package's own files, not the checkout's
    where = run(installed.with_name("python"), tmp_path, "-c", "import etl; print(etl.__file__)")
    assert "site-packages" in where.stdout and str(REPO) not in where.stdout

    # What later releases added, from the wheel too: token expiry, retention and erasure (its SQL
    # ships in the package), the wallet modules and their dependencies (cryptography, h2) and the
    # wallet_passes asset, the migrations up to qr_images statistics (0012).
    demo_env = {"ESC_SYNC_HOME": str(home)}
    made = run(installed, tmp_path, "tokens", "create", "--name", "app", "--scope", "badges:read",
               "--institution", "unife", "--expires", "30d", **demo_env)  # fmt: skip
    assert made.returncode == 0 and made.stdout.startswith("escs_"), made.stderr
    assert "EXPIRES" in run(installed, tmp_path, "tokens", "list", **demo_env).stdout
    due = run(installed, tmp_path, "retention", "--dry-run", **demo_env)
    assert due.returncode == 0 and "due for erasure" in due.stdout, due.stderr
    with sqlite3.connect(home / "state.sqlite") as db:
        registered = "SELECT pers_id FROM persons WHERE institution = 'unife' AND state = 'registered'"
        (pers_id,) = db.execute(registered).fetchone()
    erase = run(installed, tmp_path, "erase", "--institution", "unife", "--pers-id", str(pers_id),
                "--dry-run", **demo_env)  # fmt: skip
    assert erase.returncode == 0 and erase.stdout.startswith(f"would erase person {pers_id}"), erase.stderr
    modules = run(installed.with_name("python"), tmp_path, "-c",
                  "import etl.wallet.apple, etl.wallet.google, etl.api.app, etl.erasure; "
                  "import etl.wallet.follow, etl.wallet.google_emulator, etl.assets.wallet, httpx; "
                  "httpx.Client(http2=True).close(); "  # APNs: h2 installed with the package
                  "from etl.resources.esse3 import sql; sql('clear_esi'); sql('clear_badge')")  # fmt: skip
    assert modules.returncode == 0, modules.stderr[-2000:]
    # The wallet_passes asset from the installed package: unipa (the demo TOML's last university) issues
    # Apple passes with a test chain; a partition's run stores them private.
    chain = make_chain(tmp_path, password=None)
    with (home / "esc-sync.toml").open("a") as toml:
        toml.write(
            f'\n[atenei.apple_wallet]\npass_type_id = "pass.it.unipa.esc"\nteam_id = "ABCDE12345"\n'
            f'certificate = "{chain["pass"]}"\nkey = "{chain["key"]}"\nwwdr_certificate = "{chain["wwdr"]}"\n'
        )
    passes = run(installed, tmp_path, "materialize", "--partition", "2025|unipa", **demo_env)
    assert passes.returncode == 0, passes.stdout[-2000:] + passes.stderr[-2000:]
    stored = list((home / "wallet" / "unipa").glob("*.pkpass"))
    assert stored and all(p.stat().st_mode & 0o077 == 0 for p in stored)

    state = make_url(pg_url).render_as_string(hide_password=False)
    upgrade = run(installed, tmp_path, "db", "upgrade", ESC_SYNC_HOME=str(home), ESC_SYNC_DATABASE_URL=state)
    assert upgrade.returncode == 0 and "state DB at revision 0012" in upgrade.stdout, upgrade.stderr

    (home / "deploy.toml").write_text(deploy_toml("http://127.0.0.1:9/esc-rest", 2024, 2025))
    deploy_env = {"ESC_SYNC_HOME": str(home), "ESC_SYNC_CONFIG": str(home / "deploy.toml")}
    init = run(
        installed, tmp_path, "deploy", "init", **deploy_env, ESC_SYNC_DATABASE_URL=state,
        ESC_SYNC_DAGSTER_PG_URL=dagster_pg, ESC_SYNC_BROKER_URL=broker,
    )  # fmt: skip
    assert init.returncode == 0, init.stdout + init.stderr
    assert "Dagster storage ready" in init.stdout and (home / "dagster" / "workspace.yaml").is_file()
    # Issue 25 from the wheel: serve's run host starts from the installed package and answers its
    # launcher; the batch job and the deployment's executor are in the package's definitions.
    host = run(installed.with_name("python"), tmp_path, "-c", RUN_HOST_CHECK, **deploy_env,
               DAGSTER_HOME=str(home / "dagster"), ESC_SYNC_DATABASE_URL=state,
               ESC_SYNC_DAGSTER_PG_URL=dagster_pg, ESC_SYNC_BROKER_URL=broker)  # fmt: skip
    assert host.returncode == 0 and host.stdout.endswith("run host answered\n"), host.stdout + host.stderr


RUN_HOST_CHECK = """
import subprocess, sys, time
from pathlib import Path
import os
from etl.deploy.run_host import request_run, socket_path
from etl.definitions import defs
d = defs()
jobs = {j.name for j in d.resolve_all_job_defs()}
assert {"esc_sync", "esc_sync_batch"} <= jobs, jobs
assert d.resolve_job_def("esc_sync").executor_def.name == "celery_or_in_run"
home = Path(os.environ["DAGSTER_HOME"])
proc = subprocess.Popen([sys.executable, "-m", "etl.deploy.run_host"])
try:
    for _ in range(600):
        if socket_path(home).exists():
            break
        time.sleep(0.1)
    try:
        request_run(home, "0" * 36, "{}")
    except RuntimeError as e:
        assert "could not start the run" in str(e)
        print("run host answered")
finally:
    proc.terminate()
    proc.wait(timeout=30)
"""


def test_a_sites_own_statement_replaces_the_packaged_one(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'esse3.sqlite'}"
    generate(url, seed=2, students=120, first_year=2025, last_year=2025, now=dt.datetime(2026, 11, 2, 9))
    site = tmp_path / "site-sql"
    site.mkdir()
    # A site that keeps closed careers out of esc-sync's view, in its own copy of one statement.
    (site / "careers_changed.sql").write_text(sql("careers_changed").replace(
        'WHERE s."AA_ID" = :aa_id', 'WHERE s."AA_ID" = :aa_id AND s."STA_STU_COD" <> \'X\''
    ))  # fmt: skip
    packaged = [r for b in Esse3Source("unife", url).changed_careers(2025, {}) for r in b]
    own = [r for b in Esse3Source("unife", url, sql_dir=site).changed_careers(2025, {}) for r in b]
    assert any(r.STA_STU_COD == "X" for r in packaged)
    assert own and not any(r.STA_STU_COD == "X" for r in own)
    # the statements the site did not copy are still esc-sync's
    assert Esse3Source("unife", url, sql_dir=site).count_of_year("P01_STU", 2025) == len(packaged)
