"""``grace_plugins.run_simple`` keeps ``werkzeug.serving.run_simple``'s options and meaning
(threads or not, processes, TLS, static files, the debugger, the stat reloader, werkzeug's own
errors) across upgrades, through a script (tests/harness/flask_site.py's ``SCRIPT``)."""

from __future__ import annotations

import http.client
import json
import os
import ssl
import subprocess
import threading

import pytest

from tests.harness import (
    PYTHON,
    READY_LINE,
    ROOT,
    Load,
    fd_count,
    http_get,
    wait_served_by,
    wait_until,
)
from tests.harness.flask_site import (
    FLASK,
    SCRIPT,
    assert_clean,
    set_version,
    start_script,
    wait_exited,
)

pytestmark = pytest.mark.skipif(not os.path.exists(FLASK), reason="flask is not installed")


# -- run_simple parity --------------------------------------------------------------------------
class HttpsClient:
    """GETs over TLS without verification (self-signed certificates)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.context = ssl._create_unverified_context()

    def get(self, path: str = "/hello", timeout: float = 10.0) -> tuple[int, str]:
        conn = http.client.HTTPSConnection(
            "127.0.0.1", self.port, timeout=timeout, context=self.context
        )
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read().decode()
        finally:
            conn.close()


def upgrade_under_load(server, port, script, version="v2") -> int:
    """HUP with new code while plain-HTTP clients run; return the new generation's pid."""
    with Load(port, fresh=1, keepalive=1, slow=1, slow_seconds=1.0) as load:
        set_version(script, version)
        mark = server.mark()
        pid = server.upgrade(30)
        wait_until(lambda: http_get(port).version == version, 10, f"{version} to answer")
        wait_exited(server, 1, mark)
        report = load.stop()
    assert_clean(report)
    return pid


@pytest.mark.timeout(60)
@pytest.mark.parametrize("options", [{"threaded": True}, {"threaded": False}])
def test_run_simple_threaded_or_not(start_server, tmp_path, options):
    server, port, script = start_script(start_server, tmp_path, **options)
    # the banner (the supervisor prints it once the first generation serves)
    server.wait_for(rf"Running on http://127\.0\.0\.1:{port}", 10)
    server.wait_for(rf"kill -HUP {server.pid}", 10)
    pid = upgrade_under_load(server, port, script)
    assert http_get(port).pid == pid
    assert server.stop() == 0


@pytest.mark.timeout(60)
def test_run_simple_processes(start_server, tmp_path):
    server, port, script = start_script(start_server, tmp_path, processes=2)
    first = http_get(port)
    assert f"ppid:{server.generation_pids()[1]}" in first.body  # a forked request process
    pid = upgrade_under_load(server, port, script)
    assert f"ppid:{pid}" in http_get(port).body
    assert server.stop() == 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["adhoc", "files"])
def test_run_simple_ssl(start_server, tmp_path, kind):
    if kind == "adhoc":
        ssl_context = "adhoc"
    else:
        from werkzeug.serving import make_ssl_devcert

        ssl_context = list(make_ssl_devcert(str(tmp_path / "dev"), host="localhost"))
    server, port, script = start_script(start_server, tmp_path, ssl_context=ssl_context)
    server.wait_for(rf"Running on https://127\.0\.0\.1:{port}", 10)  # the banner
    client = HttpsClient(port)
    old_pid = server.generation_pids()[1]
    fds = fd_count(old_pid)  # before any request: nothing transient is open
    slow: list = []
    thread = threading.Thread(target=lambda: slow.append(client.get("/hello?sleep=1")))
    thread.start()
    if fds is not None:  # the old generation has accepted the slow request
        wait_until(lambda: fd_count(old_pid) > fds, 10, "the slow request to be accepted")
    status, body = client.get()
    assert status == 200 and "version:v1" in body
    set_version(script, "v2")
    pid = server.upgrade(30)
    wait_until(lambda: f"ospid:{pid} version:v2" in client.get()[1], 10, "v2 over https")
    thread.join(15)
    assert slow and slow[0][0] == 200 and f"ospid:{old_pid} version:v1" in slow[0][1]
    assert server.stop() == 0


@pytest.mark.timeout(60)
def test_run_simple_static_files(start_server, tmp_path):
    (tmp_path / "public").mkdir()
    (tmp_path / "public" / "hello.txt").write_text("static hello\n")
    server, port, script = start_script(
        start_server, tmp_path, static_files={"/static": str(tmp_path / "public")}
    )
    assert http_get(port, "/static/hello.txt").body == "static hello\n"
    upgrade_under_load(server, port, script)
    assert http_get(port, "/static/hello.txt").body == "static hello\n"
    assert server.stop() == 0


@pytest.mark.timeout(60)
def test_run_simple_debugger(start_server, tmp_path):
    server, port, script = start_script(start_server, tmp_path, use_debugger=True)
    page = http_get(port, "/boom")
    assert page.status == 500 and "Werkzeug Debugger" in page.body
    upgrade_under_load(server, port, script)
    page = http_get(port, "/boom")
    assert page.status == 500 and "RuntimeError: boom on purpose" in page.body
    assert server.stop() == 0


@pytest.mark.timeout(60)
def test_run_simple_stat_reloader(start_server, tmp_path):
    server, port, script = start_script(
        start_server,
        tmp_path,
        use_reloader=True,
        reloader_type="stat",
        reloader_interval=0.2,
        exclude_patterns=[os.path.join(ROOT, "*")],
    )
    for number in (2, 3):
        mark = server.mark()
        set_version(script, f"v{number}")
        pid = int(server.wait_for(READY_LINE, 30, mark).group(2))
        assert wait_served_by(port, pid).version == f"v{number}"
        wait_exited(server, number - 1, mark)
    assert server.stop() == 0


def test_run_simple_rejects_what_werkzeug_rejects(tmp_path):
    script = tmp_path / "serve.py"
    script.write_text(SCRIPT)

    def run(options) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PYTHON, str(script), json.dumps(options)],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "PYTHONPATH": ROOT},
        )

    both = run({"threaded": True, "processes": 2})
    assert "Cannot have a multi-thread and multi-process server." in both.stderr
    bad_type = run({"use_reloader": True, "reloader_type": "nope"})
    assert "Unknown reloader_type 'nope'" in bad_type.stderr
    bad_cert = run({"ssl_context": [str(tmp_path / "missing.crt"), str(tmp_path / "x.key")]})
    assert bad_cert.returncode == 2
    assert bad_cert.stderr.startswith("Error: Cannot load the TLS certificate")


# -- small pieces, in process -------------------------------------------------------------------
def test_listen_address_follows_werkzeug():
    from grace_plugins.werkzeug.serving import listen_address

    assert listen_address("localhost", 5000) == "127.0.0.1:5000"  # names bind IPv4
    assert listen_address("::1", 5000) == "[::1]:5000"
    assert listen_address("unix:///run/app.sock", 0) == "unix:/run/app.sock"


def test_tracked_handler_keeps_the_users_protocol_version():
    from werkzeug.serving import WSGIRequestHandler

    from grace_plugins.werkzeug.server import tracked_handler

    class OldSchool(WSGIRequestHandler):
        protocol_version = "HTTP/1.0"

    assert vars(tracked_handler(OldSchool))["protocol_version"] == "HTTP/1.0"
    assert "protocol_version" not in vars(tracked_handler(None))
