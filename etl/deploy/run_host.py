"""The run host: runs start as forks of a warm process instead of fresh Python processes.

Dagster's default launcher asks a code server to start every run as a new process, which imports
Dagster and the code location and builds the definitions before its first step: about 2.5 CPU-s a run,
most of what a run carrying one changed career costs (docs/performance.md, issue 25). `esc-sync serve`
starts this host beside the daemon and the webserver; it imports all of that once, and esc-sync's
launcher (etl/deploy/launcher.py) hands it each run's id over a Unix socket in DAGSTER_HOME (0600).
The host forks, and the child runs the run exactly as Dagster's own run process does
(``dagster api execute_run``'s body): the same events, the same executor, the same "Started process
for run" event that run monitoring's health check reads. A run is still a process of its own: a
crash, a leak or SIGKILL stays with that run.

The host stays single-threaded and holds no connection (a fork copies neither threads nor usable
sockets); each child opens its own. Definitions are those of the host's start: like the code servers,
`serve` is restarted after a configuration change.
"""

from __future__ import annotations

import gc
import os
import selectors
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SOCKET_NAME = "run-host.sock"
MAX_SOCKET_PATH = 107  # a Unix socket's address has at most 107 bytes (108 with its NUL)
# What a run imports only when it gets there (a step, its instance's storages); imported once here
# instead of in every run.
WARM_MODULES = ("dagster._cli.api", "dagster_celery", "etl.deploy.worker_app", "etl.deploy.storage",
                "psycopg2.extras", "upath.core")  # fmt: skip


def socket_path(dagster_home: Path) -> Path:
    return dagster_home / SOCKET_NAME


@contextmanager
def address(path: Path) -> Iterator[str]:
    """The socket's address: a path too long for one (a deep DAGSTER_HOME) is reached through its
    folder's descriptor (Linux's /proc/self/fd), which names the same file in a few bytes."""
    if len(os.fsencode(path)) <= MAX_SOCKET_PATH:
        yield str(path)
        return
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{folder}/{path.name}"
    finally:
        os.close(folder)


def warm(origin_json: str) -> None:
    """Build the job the run names (cached by Dagster per job origin: the children find it built)."""
    from dagster._core.origin import JobPythonOrigin
    from dagster._serdes import deserialize_value
    from dagster._utils.hosted_user_process import recon_job_from_origin

    recon_job_from_origin(deserialize_value(origin_json, JobPythonOrigin)).get_definition()


def run_child(run_id: str) -> int:
    """In the fork: run the run as Dagster's run process would, and say nothing more."""
    from dagster import DagsterInstance
    from dagster._cli.api import _execute_run_command_body

    with DagsterInstance.get() as instance:
        return _execute_run_command_body(run_id, instance, lambda _: None, set_exit_code_on_failure=False)


def fork_run(run_id: str, origin_json: str, listener: socket.socket) -> int:
    warm(origin_json)
    if threading.active_count() > 1:  # a fork would copy a thread's locks, not the thread
        raise RuntimeError("the host has started a thread")
    gc.freeze()  # the children share the warm heap instead of copying it on their first collection
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        listener.close()
        for s in (signal.SIGTERM, signal.SIGCHLD):
            signal.signal(s, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # Dagster's cancellation interrupts
        gc.unfreeze()
        code = run_child(run_id)
    except BaseException as e:  # the run's own failures are in its events; this is the host's side
        print(f"run {run_id[:8]}: {type(e).__name__} before the run could report", file=sys.stderr)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve_runs(dagster_home: Path) -> int:
    for module in WARM_MODULES:
        __import__(module)
    import etl.definitions  # noqa: F401  (the code location's modules)

    path = socket_path(dagster_home)
    path.unlink(missing_ok=True)  # a killed predecessor's
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # the socket is 0600 from its creation
    try:
        with address(path) as where:
            listener.bind(where)
    finally:
        os.umask(old_umask)
    listener.listen(64)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    print(f"run host: ready on {path}", flush=True)
    try:
        while not stopping.is_set():
            if selector.select(timeout=1.0):
                accept(listener)
            reap()
    finally:
        path.unlink(missing_ok=True)
        listener.close()
    # Runs in flight go on: each is a Dagster run reporting to the instance, ended by itself or by
    # `serve`'s stop (it stops every descendant).
    return 0


def accept(listener: socket.socket) -> None:
    conn, _ = listener.accept()
    with conn:
        conn.settimeout(10)
        try:
            run_id, origin_json = read_request(conn)
            pid = fork_run(run_id, origin_json, listener)
            conn.sendall(f"ok {pid}\n".encode())
        except Exception as e:  # the launcher falls back to Dagster's own launch
            conn.sendall(f"error {type(e).__name__}: {str(e)[:200]}\n".encode())


def read_request(conn: socket.socket) -> tuple[str, str]:
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(65536)
        if not chunk:
            raise ConnectionError("request cut short")
        data += chunk
    run_id, _, origin_json = data.decode().rstrip("\n").partition(" ")
    return run_id, origin_json


def reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def request_run(dagster_home: Path, run_id: str, origin_json: str, timeout_s: float = 30.0) -> int:
    """Ask the host to start a run: its process id. Raises FileNotFoundError or ConnectionRefusedError
    when no host listens (no `serve` with a run host here, or it is stopping), RuntimeError when the
    host started nothing, another OSError (a timeout) when it is not known whether it did."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout_s)
        with address(socket_path(dagster_home)) as where:
            s.connect(where)
        s.sendall(f"{run_id} {origin_json}\n".encode())
        answer = s.makefile().readline().strip()
    status, _, detail = answer.partition(" ")
    if status != "ok":
        raise RuntimeError(f"the run host could not start the run: {detail or 'no answer'}")
    return int(detail)


def main() -> None:
    sys.exit(serve_runs(Path(os.environ["DAGSTER_HOME"])))


if __name__ == "__main__":
    main()
