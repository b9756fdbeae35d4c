"""Run the emulator as a subprocess, for tests, benchmarks and the demo.

A real process (not a thread) keeps the emulator's CPU off the client's interpreter and lets a test
kill and restart it. Keys and fault settings travel in the child's environment, never its argv (a
command line is visible to every local user).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

import etl
from etl.emulator.faults import ENV_PREFIX, FaultConfig, env_name

_SOURCE_ROOT = Path(etl.__file__).resolve().parent.parent


class EmulatorProcess:
    def __init__(
        self,
        api_keys: Mapping[str, str],
        db_path: Path | None = None,
        faults: FaultConfig | None = None,
        port: int | None = None,
        startup_timeout_s: float = 20.0,
    ) -> None:
        for key in api_keys:
            if not key or "," in key or any(c.isspace() for c in key):
                raise ValueError("API keys must be non-empty, without commas or spaces")
        self._api_keys = dict(api_keys)
        self.db_path = None if db_path is None else Path(db_path)  # None: in memory
        self._faults = faults or FaultConfig()
        self.port = port or 0
        self._startup_timeout_s = startup_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._admin = httpx.Client(timeout=10.0, trust_env=False)

    @property
    def url(self) -> str:
        """The Router base URL, including ``/esc-rest`` (API paths follow as ``/api/v2/...``)."""
        return f"http://127.0.0.1:{self.port}/esc-rest"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/_emulator"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self) -> EmulatorProcess:
        if self._proc is not None:
            raise RuntimeError("emulator already running")
        env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
        env["ESC_EMULATOR_API_KEYS"] = ",".join(f"{k}:{pic}" for k, pic in self._api_keys.items())
        for name, value in self._faults.to_dict().items():
            if value is None:
                continue
            if name == "fault_kinds":
                value = ",".join(f"{k}={w}" for k, w in value.items())
            elif name == "deny_pics":
                value = ",".join(value)
            env[env_name(name)] = str(value)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_SOURCE_ROOT), env.get("PYTHONPATH")) if p)
        with tempfile.TemporaryDirectory(prefix="esc-emulator-") as tmp:
            port_file = Path(tmp) / "port"
            self._proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "etl.emulator",
                    "--port",
                    str(self.port),
                    *(["--db", str(self.db_path)] if self.db_path else []),
                    "--port-file",
                    str(port_file),
                ],
                env=env,
                stdin=subprocess.DEVNULL,
            )
            try:
                self.port = self._wait_ready(port_file)
            except BaseException:
                self.stop()
                raise
        return self

    def _wait_ready(self, port_file: Path) -> int:
        assert self._proc is not None
        deadline = time.monotonic() + self._startup_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"emulator exited with code {self._proc.returncode} during startup")
            if port_file.exists():
                port = int(port_file.read_text())
                try:
                    r = self._admin.get(f"http://127.0.0.1:{port}/_emulator/health", timeout=1.0)
                    if r.status_code == 200:
                        return port
                except httpx.TransportError:
                    pass
            time.sleep(0.05)
        raise RuntimeError(f"emulator not ready within {self._startup_timeout_s} s")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def restart(self) -> EmulatorProcess:
        """Stop and start on the same port and database (state must survive)."""
        self.stop()
        return self.start()

    def close(self) -> None:
        self.stop()
        self._admin.close()

    def set_faults(self, faults: FaultConfig | Mapping[str, Any]) -> dict[str, Any]:
        body = faults.to_dict() if isinstance(faults, FaultConfig) else dict(faults)
        r = self._admin.put(f"{self.admin_url}/faults", json=body)
        if r.status_code != 200:
            raise ValueError(f"emulator refused the fault config: {r.text}")
        self._faults = FaultConfig.from_dict(r.json())  # a restart keeps the faults
        return r.json()

    def stats(self) -> dict[str, Any]:
        r = self._admin.get(f"{self.admin_url}/stats")
        r.raise_for_status()
        return r.json()

    def reset(self) -> None:
        self._admin.post(f"{self.admin_url}/reset").raise_for_status()

    def __enter__(self) -> EmulatorProcess:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def start_emulator(
    api_keys: Mapping[str, str],
    db_path: Path | None = None,
    faults: FaultConfig | Mapping[str, Any] | None = None,
    port: int | None = None,
) -> EmulatorProcess:
    """Start the emulator on a free loopback port (or ``port``) and wait until it answers."""
    config = FaultConfig.from_dict(faults) if isinstance(faults, Mapping) else faults
    return EmulatorProcess(api_keys, db_path, config, port).start()
