"""Dagster's UI is never open by default (issue 22, item 1): `serve` warns on any address but loopback,
README's nginx example (deploy/nginx/esc-sync-ui.conf) lets in only holders of an operator certificate,
and `serve --read-only` gives a webserver whose GraphQL refuses to stop a sensor."""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from etl.demo.config import demo_config_toml
from etl.deploy.processes import OPEN_UI_WARNING, is_loopback, webserver_command
from tests.deployment import free_port

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "deploy" / "nginx" / "esc-sync-ui.conf"
STOP_SENSOR = """mutation { stopSensor(id: "%s") { __typename ... on PythonError { message } } }"""
SENSORS = "{ repositoriesOrError { ... on RepositoryConnection { nodes { sensors { id name } } } } }"


def test_only_loopback_counts_as_loopback() -> None:
    for host in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "10.1.2.3", "192.0.2.1", "no-such-host.invalid"):
        assert not is_loopback(host), host


def test_serve_on_another_address_warns_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "esc-sync.toml").write_text(demo_config_toml() + "\n[deploy]\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ESC_SYNC_", "DAGSTER_"))}
    env |= {
        "ESC_SYNC_HOME": str(tmp_path), "ESC_SYNC_CONFIG": str(tmp_path / "esc-sync.toml"),
        "ESC_SYNC_DATABASE_URL": "postgresql+psycopg://u@127.0.0.1:9/x",
        "ESC_SYNC_DAGSTER_PG_URL": "postgresql://u@127.0.0.1:9/dagster",
    }  # fmt: skip
    for host, warned in (("0.0.0.0", True), ("127.0.0.1", False)):
        done = subprocess.run(
            [sys.executable, "-m", "etl.cli", "serve", "--host", host, "--port", str(free_port())],
            env=env, cwd=REPO, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode != 0  # no `deploy init` here: it stops after the warning
        lines = [line for line in done.stderr.splitlines() if "warning" in line]
        assert lines == ([OPEN_UI_WARNING.format(host=host)] if warned else []), done.stderr


# --- the nginx example ------------------------------------------------------------------------------


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def _ca(d: Path, name: str) -> tuple[Path, Path]:
    key, crt = d / f"{name}.key", d / f"{name}.crt"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
             "-keyout", str(key), "-out", str(crt))  # fmt: skip
    return key, crt


def _signed(d: Path, name: str, ca: tuple[Path, Path], san: str | None = None) -> tuple[Path, Path]:
    key, csr, crt, ext = d / f"{name}.key", d / f"{name}.csr", d / f"{name}.crt", d / f"{name}.ext"
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(csr)
    )
    ext.write_text(f"subjectAltName={san}\n" if san else "basicConstraints=CA:FALSE\n")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca[1]), "-CAkey", str(ca[0]), "-CAcreateserial",
             "-days", "2", "-extfile", str(ext), "-out", str(crt))  # fmt: skip
    return crt, key


class _Echo(BaseHTTPRequestHandler):
    """Stands for the webserver: answers with what reached it."""

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = json.dumps(
            {"path": self.path, "body": self.rfile.read(length).decode(), "headers": dict(self.headers)}
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[tuple[str, Path, dict[str, tuple[Path, Path]]]]:
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if nginx is None:
        if os.environ.get("ESC_SYNC_REQUIRE_NGINX"):
            pytest.fail("nginx is required here (.ci/run installs it)")
        pytest.skip("nginx not installed (apt-get install nginx-light)")
    tls = tmp_path / "tls"
    tls.mkdir()
    operators = _ca(tls, "operators-ca")
    server = _signed(tls, "server", operators, san="IP:127.0.0.1")
    certs = {
        "operator": _signed(tls, "operator", operators),
        "stranger": _signed(tls, "stranger", _ca(tls, "other")),
    }
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    port = free_port()
    site = EXAMPLE.read_text()
    for old, new in (
        ("listen 443 ssl;", f"listen 127.0.0.1:{port} ssl;"),
        ("/etc/esc-sync/tls/server.crt", str(server[0])),
        ("/etc/esc-sync/tls/server.key", str(server[1])),
        ("/etc/esc-sync/tls/operators-ca.crt", str(operators[1])),
        ("http://127.0.0.1:3000", f"http://127.0.0.1:{upstream.server_port}"),
    ):
        assert old in site, old  # the example still has the shape README describes
        site = site.replace(old, new)
    (tmp_path / "site.conf").write_text(site)
    temp = {k: tmp_path / k for k in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
    (tmp_path / "nginx.conf").write_text(
        f"daemon off; worker_processes 1; pid {tmp_path}/nginx.pid; error_log {tmp_path}/error.log;\n"
        + ("user root;\n" if os.geteuid() == 0 else "")
        + "events {}\nhttp {\n  access_log off;\n"
        + "".join(f"  {k}_temp_path {v};\n" for k, v in temp.items()).replace("body_temp", "client_body_temp")
        + f"  include {tmp_path}/site.conf;\n}}\n"
    )
    proc = subprocess.Popen(
        [nginx, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        url = f"https://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            try:
                httpx.get(url, verify=_tls(operators[1], None), trust_env=False, timeout=2)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "nginx did not start"
                time.sleep(0.1)
        yield url, operators[1], certs
    finally:
        proc.terminate()
        proc.wait(10)
        upstream.shutdown()


def _tls(ca: Path, cert: tuple[Path, Path] | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        context.load_cert_chain(str(cert[0]), str(cert[1]))
    return context


def test_the_nginx_example_lets_in_only_operator_certificates(
    proxy: tuple[str, Path, dict[str, tuple[Path, Path]]],
) -> None:
    url, ca, certs = proxy
    mutation = {"query": STOP_SENSOR % "esse3_changes"}
    for cert in (None, certs["stranger"]):
        with httpx.Client(verify=_tls(ca, cert), trust_env=False) as http:
            r = http.post(f"{url}/graphql", json=mutation)
        assert r.status_code == 400 and "certificate" in r.text.lower(), (cert, r.status_code)
    with httpx.Client(verify=_tls(ca, certs["operator"]), trust_env=False) as http:
        r = http.post(
            f"{url}/graphql", json=mutation, headers={"Upgrade": "websocket", "Connection": "Upgrade"}
        )
    assert r.status_code == 200
    seen = r.json()
    assert seen["path"] == "/graphql" and "stopSensor" in seen["body"]
    headers = {k.lower(): v for k, v in seen["headers"].items()}
    assert headers["x-operator"] == "CN=operator" and headers["upgrade"] == "websocket"


# --- read-only --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_read_only_webserver_refuses_to_stop_a_sensor(tmp_path: Path) -> None:
    """The webserver exactly as `serve --read-only` starts it; the mutation of the security finding."""
    home = tmp_path / "dagster"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    (home / "workspace.yaml").write_text("load_from:\n  - python_module: etl.definitions\n")
    (tmp_path / "esc-sync.toml").write_text(demo_config_toml() + "\n[deploy]\n")  # its sensors run
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ESC_SYNC_", "DAGSTER_"))}
    env |= {"DAGSTER_HOME": str(home), "ESC_SYNC_HOME": str(tmp_path)}
    log = (tmp_path / "webserver.log").open("wb")
    proc = subprocess.Popen(
        webserver_command(home / "workspace.yaml", "127.0.0.1", port, read_only=True),
        env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "webserver.log").read_text()[-2000:]
            try:
                if httpx.get(f"{url}/server_info", trust_env=False).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the webserver did not start"
            time.sleep(0.5)
        graphql = f"{url}/graphql"
        found = httpx.post(graphql, json={"query": SENSORS}, trust_env=False, timeout=30).json()
        sensors = {
            s["name"]: s["id"] for n in found["data"]["repositoriesOrError"]["nodes"] for s in n["sensors"]
        }
        assert "esse3_changes" in sensors, found
        stop = {"query": STOP_SENSOR % sensors["esse3_changes"]}  # what the security test sent
        r = httpx.post(graphql, json=stop, trust_env=False, timeout=30)
        assert r.json()["data"]["stopSensor"]["__typename"] == "UnauthorizedError", r.text[:500]
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(20)
        log.close()
