"""`esc-sync deploy init`, `esc-sync serve` and `esc-sync worker`: the deployment's processes.

`serve` supervises Dagster's own webserver and daemon (the daemon runs the sensor, the run queue, run
monitoring and retries) and the code server both load the code location from (Dagster's production
layout: restart `serve` to load new code or configuration). The webserver has no authentication of its
own: it binds to loopback unless told otherwise (with a warning), and ``--read-only`` gives a UI that
can only watch. Logs go to ``$ESC_SYNC_HOME/logs``, a health check answers `serve --check`, and if any
of its processes dies the others are stopped and `serve` exits non-zero, for systemd or a container
runtime to restart. `worker` becomes a Celery worker executing steps.
"""

from __future__ import annotations

import ctypes
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import psutil

from etl.config import DeploySettings, Settings
from etl.deploy.env import BROKER_ENV, DAGSTER_PG_ENV, broker_url, dagster_pg_url, redacted
from etl.deploy.instance import (
    CODE_ATTRIBUTE,
    CODE_MODULE,
    LOCATION_NAME,
    served_workspace_yaml,
    write_instance,
)
from etl.deploy.worker_app import queue
from etl.errors import ConfigError, EscSyncError, ExitCode
from etl.files import write_atomically

BIN = Path(sys.executable).parent  # the venv's commands, activated or not
STOP_GRACE_S = 20.0


def deployment(settings: Settings) -> DeploySettings:
    if settings.deploy is None:
        raise ConfigError(
            f'{settings.config_path}: no [deploy] section: add one to deploy (README "Production")'
        )
    if settings.database_url.startswith("sqlite"):
        raise ConfigError(
            "a deployment keeps its state DB on PostgreSQL (workers on several machines share it): "
            "set ESC_SYNC_DATABASE_URL"
        )
    return settings.deploy


def deployment_env(settings: Settings) -> dict[str, str]:
    """What every process of the deployment reads: the same configuration, instance, storage, broker."""
    from etl.orchestrate import dagster_home

    env = dict(os.environ)
    env |= {
        "ESC_SYNC_HOME": str(settings.home),
        "ESC_SYNC_CONFIG": str(settings.config_path),
        "ESC_SYNC_DATABASE_URL": settings.database_url,
        "DAGSTER_HOME": str(dagster_home(settings)),
        DAGSTER_PG_ENV: dagster_pg_url(env),
        BROKER_ENV: broker_url(env),
    }
    return env


def init(settings: Settings) -> int:
    """Write the instance and workspace, create Dagster's tables, check the broker answers."""
    deploy = deployment(settings)
    env = deployment_env(settings)
    home = Path(env["DAGSTER_HOME"])
    for path in write_instance(home, deploy):
        print(f"wrote {path}")
    os.environ.update({DAGSTER_PG_ENV: env[DAGSTER_PG_ENV], "DAGSTER_HOME": str(home)})
    from dagster import DagsterInstance

    with DagsterInstance.from_config(str(home)) as instance:
        instance.upgrade()  # Dagster's schema in its PostgreSQL database, idempotent
    print(f"Dagster storage ready on {redacted(env[DAGSTER_PG_ENV])}")
    from etl.store.db import check_reachable, make_engine
    from etl.store.migrate import upgrade

    engine = make_engine(settings.database_url)
    try:
        check_reachable(engine)
        upgrade(engine)
    finally:
        engine.dispose()
    print(f"state DB migrated on {redacted(settings.database_url)}")
    check_broker(env[BROKER_ENV])
    print(f"broker {redacted(env[BROKER_ENV])} answers")
    print("next: `esc-sync serve` (webserver + daemon) and `esc-sync worker` on each worker machine")
    return 0


def check_broker(url: str, timeout_s: float = 5.0) -> None:
    from kombu import Connection

    try:
        with Connection(url, connect_timeout=timeout_s) as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout_s)
    except Exception as e:  # kombu raises the transport's own errors
        raise EscSyncError(
            f"broker {redacted(url)} unreachable ({type(e).__name__}): start it or set {BROKER_ENV}",
            exit_code=ExitCode.SERVICE,
        ) from None


def worker(settings: Settings, name: str) -> int:
    """Become a Celery worker (exec: signals reach Celery itself; SIGTERM finishes the step first).

    One step at a time in the worker's own process (``solo``): a killed worker takes its step with it
    and the broker hands the step to another worker, instead of an orphaned pool child finishing it
    while another worker runs it again. Scale out with more workers."""
    deployment(settings)
    env = deployment_env(settings)
    check_broker(env[BROKER_ENV])
    cmd = [
        sys.executable, "-m", "celery", "-A", "etl.deploy.worker_app", "worker",
        "-Q", queue(), "--pool", "solo", "--prefetch-multiplier", "1", "-n", f"{name}@%h",
        "--loglevel", "INFO", "--without-gossip", "--without-mingle",
    ]  # fmt: skip
    sys.stdout.flush()
    os.execve(sys.executable, cmd, env)


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` names is this machine's loopback (0.0.0.0 and :: are not)."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


OPEN_UI_WARNING = (
    "esc-sync: warning: serving Dagster's UI on {host}: it has no login of its own, so anyone who reaches "
    "it can stop the sensors and launch, cancel or delete runs; put an authenticating proxy in front "
    '(README "Production") or serve on 127.0.0.1'
)


def code_server_command(socket_path: Path) -> list[str]:
    """Dagster's code server for the code location, on a Unix socket (no port to reach from elsewhere)."""
    return [
        sys.executable, "-m", "dagster", "api", "grpc", "--socket", str(socket_path),
        "--module-name", CODE_MODULE, "--attribute", CODE_ATTRIBUTE, "--location-name", LOCATION_NAME,
        "--log-level", "warning",
    ]  # fmt: skip


def _wait_code_server(
    socket_path: Path, proc: subprocess.Popen[bytes], stop: _StopFlag, logs: Path, timeout_s: float = 180.0
) -> None:
    """Until the code server answers (it has imported the code location and built the definitions)."""
    from dagster._grpc.client import DagsterGrpcClient

    client = DagsterGrpcClient(socket=str(socket_path))
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise EscSyncError(
                f"the code server exited ({proc.returncode}): see {logs / 'code-server'}.log",
                exit_code=ExitCode.SERVICE,
            )
        if stop.signal or time.monotonic() > deadline:
            raise EscSyncError(
                f"the code server did not answer within {timeout_s:g}s", exit_code=ExitCode.SERVICE
            )
        if socket_path.exists():
            try:
                client.ping("")
                return
            except Exception:  # not serving yet (gRPC's own errors)
                pass
        time.sleep(0.5)


def webserver_command(workspace: Path, host: str, port: int, read_only: bool) -> list[str]:
    cmd = [str(BIN / "dagster-webserver"), "-w", str(workspace), "-h", host, "-p", str(port)]
    return [*cmd, "--read-only"] if read_only else cmd


def serve(settings: Settings, host: str, port: int, *, read_only: bool = False) -> int:
    deploy = deployment(settings)
    if not is_loopback(host):
        print(OPEN_UI_WARNING.format(host=host), file=sys.stderr, flush=True)
    env = deployment_env(settings)
    home = Path(env["DAGSTER_HOME"])
    instance = home / "dagster.yaml"
    if not instance.exists():
        raise ConfigError(f"{instance} missing: run `esc-sync deploy init` first")
    logs = settings.home / "logs"
    logs.mkdir(mode=0o700, parents=True, exist_ok=True)
    _wait_port_free(host, port)  # a webserver still answering there is not ours
    state = home / SERVE_STATE
    private = _private_dir(state)
    code_socket, served = private / "code.sock", private / "workspace.yaml"
    commands = {
        "code-server": code_server_command(code_socket),
        "daemon": [str(BIN / "dagster-daemon"), "run", "-w", str(served)],
        "webserver": webserver_command(served, host, port, read_only),
    }
    if deploy.run_host:  # runs start as its warm forks; without it, from the code server
        commands["run-host"] = [sys.executable, "-m", "etl.deploy.run_host"]
    procs: dict[str, subprocess.Popen[bytes]] = {}
    stop = _StopFlag()
    started = time.time()
    try:
        record = {"pid": os.getpid(), "host": host, "port": port, "private": str(private)}
        write_atomically(state, json.dumps(record).encode())
        write_atomically(served, served_workspace_yaml(code_socket).encode())
        for what, cmd in commands.items():
            log = os.open(logs / f"{what}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            procs[what] = subprocess.Popen(
                cmd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                preexec_fn=_die_with(os.getpid()),
            )  # fmt: skip
            os.close(log)
            if what == "code-server":  # the daemon and webserver find the code location at their start
                _wait_code_server(code_socket, procs[what], stop, logs)
        url = f"http://{host}:{port}"
        _wait_healthy(url, env, procs, stop, started)
        print(f"serving: UI {url}, daemon up (sensor, run queue, monitoring); logs in {logs}", flush=True)
        while not stop.signal:
            for what, proc in procs.items():
                if proc.poll() is not None:
                    raise EscSyncError(
                        f"the {what} exited ({proc.returncode}): stopping; see {logs / what}.log",
                        exit_code=ExitCode.SERVICE,
                    )
            time.sleep(1)
        return 128 + stop.signal
    finally:
        state.unlink(missing_ok=True)
        _stop_all(procs)
        shutil.rmtree(private, ignore_errors=True)
        stop.restore()


SERVE_STATE = "serve.json"  # where a running `serve` says what it serves, for `serve --check`
PRIVATE_PREFIX = "esc-sync-serve-"


def _private_dir(state: Path) -> Path:
    """A directory for the code server's socket and the workspace naming it: private (mkdtemp makes it
    0700) and short (a socket's path has at most 107 bytes). One a killed `serve` left, as it
    recorded in ``state``, goes first."""
    left = _recorded(state)
    if left and not _alive(left):
        stale = Path(str(left.get("private", "")))
        if stale.name.startswith(PRIVATE_PREFIX) and stale.parent == Path(tempfile.gettempdir()):
            shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=PRIVATE_PREFIX))


def _die_with(parent: int) -> Callable[[], None]:
    """In a child of `serve`, before it runs: be sent SIGTERM when `serve` dies, however it dies (Linux's
    parent-death signal), so a killed `serve` leaves no webserver or daemon behind in their sessions."""

    def arm() -> None:
        if sys.platform.startswith("linux"):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
            if os.getppid() != parent:  # serve died before the signal was armed
                os._exit(1)

    return arm


PR_SET_PDEATHSIG = 1


def _wait_port_free(host: str, port: int, timeout_s: float = 30.0) -> None:
    """A restarted `serve` may find its killed predecessor's webserver still stopping: wait a little,
    then refuse with one line rather than report a webserver that is not its own."""
    deadline = time.monotonic() + timeout_s
    while True:
        with socket.socket() as s:
            try:
                s.bind((host, port))
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise EscSyncError(
                        f"port {port} on {host} is in use by another process (another serve?): stop it, "
                        "or give --port",
                        exit_code=ExitCode.SERVICE,
                    ) from None
        time.sleep(1)


def check(settings: Settings, host: str | None, port: int | None) -> int:
    """Health of a running `serve`: the webserver it serves answers and the daemon's heartbeat is
    fresh. Without --host/--port, the address the running `serve` recorded."""
    env = deployment_env(settings)
    recorded = _serve_state(Path(env["DAGSTER_HOME"])) or {}
    host, port = host or recorded.get("host") or "127.0.0.1", port or recorded.get("port")
    if port is None:
        problems = ["no `esc-sync serve` is running here (none recorded its address): give --port"]
    else:
        problems = [p for p in (_webserver_problem(f"http://{host}:{port}"), _daemon_problem(env)) if p]
    for p in problems:
        print(f"esc-sync: {p}", file=sys.stderr)
    if not problems:
        print(f"healthy: webserver http://{host}:{port} answers, daemon heartbeat fresh")
    return ExitCode.SERVICE if problems else 0


def _recorded(state: Path) -> dict[str, Any]:
    """What a `serve` recorded in ``state`` (nothing if none did)."""
    try:
        recorded = json.loads(state.read_text())
    except (OSError, ValueError):
        return {}
    return recorded if isinstance(recorded, dict) else {}


def _serve_state(home: Path) -> dict[str, Any] | None:
    """What a running `serve` recorded, when its process is alive."""
    state = _recorded(home / SERVE_STATE)
    return state if state and _alive(state) else None


def _alive(recorded: Mapping[str, Any]) -> bool:
    return psutil.pid_exists(int(recorded.get("pid", 0)))


def _webserver_problem(url: str) -> str | None:
    try:
        r = httpx.get(f"{url}/server_info", timeout=5, trust_env=False)
    except httpx.HTTPError as e:
        return f"webserver {url} unreachable ({type(e).__name__})"
    return None if r.status_code == 200 else f"webserver {url} answered {r.status_code}"


def _daemon_problem(env: Mapping[str, str], since: float | None = None) -> str | None:
    done = subprocess.run(
        [str(BIN / "dagster-daemon"), "liveness-check"], env=dict(env), capture_output=True, text=True
    )
    if done.returncode != 0:
        return "daemon not running (no fresh heartbeat)"
    if since is not None and _oldest_heartbeat(env) < since:
        return "daemon heartbeat not yet from this serve's daemon"
    return None


def _oldest_heartbeat(env: Mapping[str, str]) -> float:
    """The oldest of the daemon's heartbeats (one per daemon type), as a UNIX time."""
    from dagster import DagsterInstance

    os.environ[DAGSTER_PG_ENV] = env[DAGSTER_PG_ENV]  # the instance file names the variable
    with DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        beats = instance.get_daemon_heartbeats()
    return min((b.timestamp for b in beats.values()), default=0.0)


def _wait_healthy(
    url: str, env: Mapping[str, str], procs: Mapping[str, subprocess.Popen[bytes]], stop: _StopFlag,
    started: float, timeout_s: float = 180.0,
) -> None:  # fmt: skip
    """Our webserver answers and *our* daemon beats: every daemon heartbeat is newer than our start
    (a fresh one from before would be another daemon's)."""
    deadline = time.monotonic() + timeout_s
    while (problem := _webserver_problem(url) or _daemon_problem(env, since=started)) is not None:
        for what, proc in procs.items():
            if proc.poll() is not None:
                raise EscSyncError(f"the {what} exited ({proc.returncode})", exit_code=ExitCode.SERVICE)
        if stop.signal or time.monotonic() > deadline:
            raise EscSyncError(f"not healthy after {timeout_s:g}s: {problem}", exit_code=ExitCode.SERVICE)
        time.sleep(1)


def _stop_all(procs: Mapping[str, subprocess.Popen[bytes]]) -> None:
    # Dagster starts its code servers in sessions of their own: found before their parents go.
    descendants = [c for proc in procs.values() for c in _descendants(proc.pid)]
    for proc in procs.values():
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for proc in procs.values():
        try:
            proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    _, alive = psutil.wait_procs(descendants, timeout=5)
    for child in alive:
        child.kill()


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


class _StopFlag:
    """SIGTERM/SIGINT set ``signal``; the loop stops the children and exits 128 + it."""

    def __init__(self) -> None:
        self.signal = 0
        self._old = {s: signal.signal(s, self._set) for s in (signal.SIGTERM, signal.SIGINT)}

    def _set(self, signum: int, _frame: object) -> None:
        self.signal = signum

    def restore(self) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)
