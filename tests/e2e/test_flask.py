"""End-to-end tests of the Werkzeug/Flask adapter: ``flask --app x hotrun`` and
``grace_plugins.run_simple``, as real processes on 127.0.0.1.

Every test copies the seed app (``example_flask/app.py``) or writes its own script into
``tmp_path`` and edits it there; waits are on lines the server prints and ports answering.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import threading

import pytest

from tests.e2e.test_core_e2e import MALFORMED_INPUTS, run_with_inherited
from tests.harness import (
    PYTHON,
    READY_LINE,
    ROOT,
    Load,
    broken_at_import,
    fd_count,
    grace_cli,
    http_get,
    wait_served_by,
    wait_until,
    zombies,
)

FLASK = os.path.join(os.path.dirname(sys.executable), "flask")
SEED_APP = os.path.join(ROOT, "example_flask", "app.py")
LINUX = os.path.isdir("/proc/self/fd")
#: Other work in the repository (or on a developer's machine) must not trigger upgrades in
#: tests that watch files: the repository is on PYTHONPATH, so the reloader would watch it.
NOT_THE_REPO = f"--exclude-patterns={os.path.join(ROOT, '*')}"

pytestmark = pytest.mark.skipif(not os.path.exists(FLASK), reason="flask is not installed")


# -- helpers ------------------------------------------------------------------------------------
def seed_app(directory, version: str = "v1") -> str:
    """Copy the seed app into *directory* (created) and return its path."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "app.py")
    shutil.copy(SEED_APP, path)
    set_version(path, version)
    return path


def set_version(path, version: str, extra: str = "") -> None:
    """Write the app's original source with a new VERSION (one write, as an editor's save),
    with *extra* code first (to break it)."""
    path = str(path)
    if path.endswith("serve.py"):
        source = SCRIPT
    else:
        with open(SEED_APP) as handle:
            source = handle.read()
    source, count = re.subn(r"^VERSION = .*$", f'VERSION = "{version}"', source, flags=re.M)
    assert count == 1, "the app must define VERSION on one line"
    with open(path, "w") as handle:
        handle.write(extra + source)


def hotrun(start_server, tmp_path, *args: str, app: str = "app.py"):
    """Start ``flask --app APP hotrun -p 0 ARGS`` in *tmp_path*; return (server, port)."""
    server = start_server([FLASK, "--app", app, "hotrun", "-p", "0", *args], cwd=str(tmp_path))
    return server, server.wait_ready(30)


def wait_exited(server, number: int, after: int = 0, timeout: float = 30) -> None:
    server.wait_for(rf"generation {number} \(pid \d+\) exited after draining", timeout, after)


def assert_clean(report) -> None:
    assert not report.failures, report.summary()
    assert report.slow_started == report.slow_completed, report.summary()


def stable_supervisor(server, fds_before) -> None:
    """No fd growth and no zombies in the supervisor after upgrades."""
    if not LINUX:
        return
    wait_until(lambda: not zombies(server.pid), 10, "the supervisor to reap its children")
    # at most: "before" may have been sampled while the state file was being rewritten
    wait_until(lambda: fd_count(server.pid) <= fds_before, 5, f"at most {fds_before} fds")


# -- the command line ---------------------------------------------------------------------------
def _options(help_text: str) -> dict[str, str]:
    """{first option name: its help entry} from a click --help page."""
    section = help_text.split("Options:", 1)[1]
    entries: dict[str, str] = {}
    current = None
    for line in section.splitlines():
        found = re.match(r"  (-\w, )?(--[\w-]+)", line)
        if found:
            current = found.group(2)
            entries[current] = " ".join(line.split())
        elif current and line.strip():
            entries[current] += " " + " ".join(line.split())
    return entries


def test_hotrun_help_has_every_run_option(tmp_path):
    def help_of(command: str) -> str:
        return subprocess.run(
            [FLASK, command, "--help"],
            cwd=str(tmp_path),
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout

    run, hot = _options(help_of("run")), _options(help_of("hotrun"))
    assert set(run) <= set(hot), f"missing in hotrun: {set(run) - set(hot)}"
    for name, entry in run.items():
        assert hot[name] == entry, f"{name} differs from flask run's"
    assert {"--pidfile", "--ready-timeout", "--drain-timeout"} <= set(hot)
    assert "kill -HUP" in help_of("--help")  # the short help in `flask --help`


def test_import_grace_plugins_imports_no_framework():
    code = (
        "import sys, grace_plugins; bad = {'flask', 'werkzeug', 'click'} & set(sys.modules);"
        " assert not bad, bad"
    )
    subprocess.run([PYTHON, "-c", code], check=True, timeout=30, cwd=ROOT)


def test_bad_input_is_one_line(tmp_path):
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [FLASK, *args],
            cwd=str(tmp_path),
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "PYTHONPATH": ROOT},
        )

    missing = run("--app", "no_such_module", "hotrun", "-p", "0")
    assert missing.returncode == 4, missing.stderr
    assert "Error: Could not import 'no_such_module'." in missing.stderr
    assert "Traceback" not in missing.stderr
    key_alone = run("hotrun", "--key", __file__)
    assert key_alone.returncode == 2 and '"--cert" must also be specified' in key_alone.stderr
    cert_alone = run("hotrun", "--cert", __file__)
    assert cert_alone.returncode == 2 and "Required when using" in cert_alone.stderr


# -- the seed scenario --------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_seed_scenario(start_server, tmp_path):
    app = seed_app(tmp_path)
    pidfile = tmp_path / "hotrun.pid"
    server, port = hotrun(start_server, tmp_path, "--pidfile", str(pidfile))
    assert f"kill -HUP {server.pid}" in server.output()  # the banner says whom to signal
    assert pidfile.read_text().strip() == str(server.pid)
    old_pid = server.generation_pids()[1]
    fds = fd_count(old_pid)  # before any request: nothing transient is open
    slow: list = []
    thread = threading.Thread(target=lambda: slow.append(http_get(port, "/hello?sleep=4")))
    thread.start()
    if fds is not None:  # the old generation has accepted the slow request
        wait_until(lambda: fd_count(old_pid) > fds, 10, "the slow request to be accepted")
    assert http_get(port).body.strip() == f"WORLD! ospid:{old_pid} version:v1"

    set_version(app, "v2")
    mark = server.mark()
    new_pid = server.upgrade(30)
    fresh = wait_served_by(port, new_pid)
    assert fresh.version == "v2"
    assert thread.is_alive(), "the new code answered while the old request was in flight"
    thread.join(15)
    assert slow and slow[0].status == 200, "the in-flight request failed"
    assert (slow[0].pid, slow[0].version) == (old_pid, "v1")
    wait_exited(server, 1, mark)
    assert server.stop() == 0
    assert not pidfile.exists()


# -- under load ---------------------------------------------------------------------------------
@pytest.mark.timeout(90)
def test_ten_hup_upgrades_under_load(start_server, tmp_path):
    app = seed_app(tmp_path)
    server, port = hotrun(start_server, tmp_path)
    http_get(port)
    server.wait_warm()
    fds = fd_count(server.pid)
    with Load(port, fresh=2, keepalive=2, slow=1, slow_seconds=1.0) as load:
        for number in range(2, 12):
            set_version(app, f"v{number}")
            mark = server.mark()
            pid = server.upgrade(30)
            assert wait_served_by(port, pid).version == f"v{number}"
            wait_exited(server, number - 1, mark)
        report = load.stop()
    assert_clean(report)
    assert {f"v{n}" for n in range(2, 12)} <= report.versions, report.versions
    stable_supervisor(server, fds)
    assert server.stop() == 0


@pytest.mark.timeout(90)
def test_three_file_save_upgrades_under_load(start_server, tmp_path):
    app = seed_app(tmp_path)
    server, port = hotrun(start_server, tmp_path, "--reload", NOT_THE_REPO)
    http_get(port)
    with Load(port, fresh=2, keepalive=2, slow=1, slow_seconds=1.0) as load:
        for number in range(2, 5):
            mark = server.mark()
            set_version(app, f"v{number}")
            pid = int(server.wait_for(READY_LINE, 30, mark).group(2))
            assert wait_served_by(port, pid).version == f"v{number}"
            wait_exited(server, number - 1, mark)
        report = load.stop()
    assert_clean(report)
    assert "file changed" in server.output()
    assert server.stop() == 0


# -- rollback -----------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_broken_save_keeps_old_code_and_next_save_retries(start_server, tmp_path):
    app = seed_app(tmp_path)
    server, port = hotrun(start_server, tmp_path, "--reload", NOT_THE_REPO)
    old_pid = server.generation_pids()[1]
    with Load(port, fresh=1, keepalive=1, slow=1, slow_seconds=1.0) as load:
        mark = server.mark()
        set_version(app, "v2", extra="VERSION = (\n")  # a syntax error
        server.wait_for(r"upgrade rolled back", 30, mark)
        assert "SyntaxError" in server.output()
        resp = http_get(port)
        assert (resp.pid, resp.version) == (old_pid, "v1")
        mark = server.mark()
        set_version(app, "v3")  # the fix: the old generation is still watching
        pid = int(server.wait_for(READY_LINE, 30, mark).group(2))
        assert wait_served_by(port, pid).version == "v3"
        report = load.stop()
    assert_clean(report)
    assert server.stop() == 0


@pytest.mark.timeout(60)
def test_broken_hup_keeps_old_code_and_next_hup_retries(start_server, tmp_path):
    app = seed_app(tmp_path)
    server, port = hotrun(start_server, tmp_path)
    old_pid = server.generation_pids()[1]
    with Load(port, fresh=1, keepalive=1, slow=1, slow_seconds=1.0) as load:
        set_version(app, "v2", extra="raise RuntimeError('broken on purpose')\n")
        mark = server.mark()
        os.kill(server.pid, 1)
        server.wait_for(r"upgrade rolled back", 30, mark)
        assert "RuntimeError: broken on purpose" in server.output()
        resp = http_get(port)
        assert (resp.pid, resp.version) == (old_pid, "v1")
        set_version(app, "v3")
        pid = server.upgrade(30)
        assert wait_served_by(port, pid).version == "v3"
        report = load.stop()
    assert_clean(report)
    assert server.stop() == 0


@pytest.mark.timeout(60)
def test_hang_at_import_rolled_back_after_ready_timeout(start_server, tmp_path):
    app = seed_app(tmp_path)
    server, port = hotrun(start_server, tmp_path, "--ready-timeout", "2")
    old_pid = server.generation_pids()[1]
    set_version(app, "v2", extra="import time\ntime.sleep(120)\n")
    mark = server.mark()
    os.kill(server.pid, 1)
    server.wait_for(r"upgrade rolled back: .* was not ready within 2 s", 20, mark)
    resp = http_get(port)
    assert (resp.pid, resp.version) == (old_pid, "v1")
    set_version(app, "v3")
    pid = server.upgrade(30)
    assert wait_served_by(port, pid).version == "v3"
    assert server.stop() == 0


# -- every --app form flask run accepts ----------------------------------------------------------
FACTORY = """
import os
from flask import Flask

def create_app(version="v1"):
    app = Flask(__name__)

    @app.get("/hello")
    def hello():
        return f"WORLD! ospid:{os.getpid()} version:{version}"

    return app
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("app", "version"),
    [
        ("app", "v1"),
        ("app:app", "v1"),
        ("site/app.py", "v1"),
        ("factory", "v1"),
        ("factory:create_app('f2')", "f2"),
    ],
)
def test_app_forms(start_server, tmp_path, app, version):
    seed_app(tmp_path)
    seed_app(tmp_path / "site")
    (tmp_path / "factory.py").write_text(FACTORY)
    server, port = hotrun(start_server, tmp_path, app=app)
    assert http_get(port).version == version
    pid = server.upgrade(30)
    assert wait_served_by(port, pid).version == version
    assert server.stop() == 0


# -- run_simple parity --------------------------------------------------------------------------
SCRIPT = """
import json, os, sys, time
from grace_plugins import run_simple

VERSION = "v1"


def app(environ, start_response):
    if environ["PATH_INFO"] == "/boom":
        raise RuntimeError("boom on purpose")
    query = environ.get("QUERY_STRING", "")
    if query.startswith("sleep="):
        time.sleep(float(query[len("sleep="):]))
    body = f"WORLD! ospid:{os.getpid()} version:{VERSION} ppid:{os.getppid()}\\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


if __name__ == "__main__":
    options = json.loads(sys.argv[1])
    if isinstance(options.get("ssl_context"), list):
        options["ssl_context"] = tuple(options["ssl_context"])
    run_simple("127.0.0.1", 0, app, **options)
"""


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


def start_script(start_server, tmp_path, **options):
    script = tmp_path / "serve.py"
    script.write_text(SCRIPT)
    server = start_server([PYTHON, str(script), json.dumps(options)], cwd=str(tmp_path))
    return server, server.wait_ready(30), str(script)


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
    assert "kill -HUP" in server.output() and "Running on http://127.0.0.1:" in server.output()
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
    assert f"Running on https://127.0.0.1:{port}" in server.output()
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


@pytest.mark.timeout(30)
@pytest.mark.parametrize("reloader_type", ["stat", "watchdog"])
def test_reloader_reports_changes_and_honours_exclude_patterns(tmp_path, reloader_type):
    from grace_plugins.werkzeug.reloader import HotReloader

    watched, ignored = tmp_path / "settings.cfg", tmp_path / "notes.cfg"
    watched.write_text("a")
    ignored.write_text("a")
    changes: list[list[str]] = []
    seen = threading.Event()

    def on_change(paths: list[str]) -> None:
        changes.append(paths)
        seen.set()

    reloader = HotReloader(
        on_change,
        extra_files=[str(watched), str(ignored)],
        exclude_patterns=["*/notes.cfg", os.path.join(ROOT, "*")],
        interval=0.1,
        reloader_type=reloader_type,
        since=None,
    )
    started = threading.Event()
    original_enter = type(reloader.loop).__enter__

    def enter(loop):  # the initial scan is done: changes from now on are seen
        result = original_enter(loop)
        started.set()
        return result

    type(reloader.loop).__enter__ = enter
    reloader.start()
    try:
        assert started.wait(20), "the reloader did not start"
        ignored.write_text("b")
        watched.write_text("b")
        assert seen.wait(10), "the change was not reported"
        assert changes[0] == [str(watched)]
    finally:
        reloader.stop()


@pytest.mark.timeout(90)
def test_grace_plugins_reload_through_hotrun(start_server, tmp_path):
    """``grace-plugins reload --pidfile`` waits for the outcome of a hotrun upgrade."""

    app = seed_app(tmp_path)
    pidfile = str(tmp_path / "hotrun.pid")
    server, port = hotrun(start_server, tmp_path, f"--pidfile={pidfile}")
    set_version(app, "v2")
    good = grace_cli("reload", "--pidfile", pidfile)
    assert good.returncode == 0, good.stderr
    assert good.stdout.startswith("upgraded: generation 2 (pid ")
    wait_until(lambda: "version:v2" in http_get(port).body, 10, "v2 served")
    set_version(app, "v3", extra="raise RuntimeError('broken on purpose')\n")
    bad = grace_cli("reload", "--pidfile", pidfile)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert bad.stderr.startswith("rolled back: generation 3 ")
    assert "version:v2" in http_get(port).body
    assert server.stop() == 0


# -- issue 16: what the core promises, through flask hotrun ---------------------------------------
@pytest.mark.timeout(90)
@pytest.mark.parametrize("case", list(MALFORMED_INPUTS))
def test_malformed_inherited_input_through_hotrun(tmp_path, case):
    """Each malformed inherited input, through ``flask hotrun`` as a user starts it: one line,
    exit status 2, no traceback."""
    seed_app(tmp_path)
    env, kind, message = MALFORMED_INPUTS[case]
    argv = [FLASK, "--app", "app.py", "hotrun", "-p", "0"]
    status, stderr = run_with_inherited(argv, env, kind, tmp_path)
    lines = stderr.strip().splitlines()
    assert status == 2, stderr
    assert len(lines) == 1 and re.search(message, lines[0]), stderr
    assert "Traceback" not in stderr


#: Every way new code can fail at import (tests/harness/code.py), with its rollback line.
BROKEN_AT_IMPORT = broken_at_import(3)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("kind", list(BROKEN_AT_IMPORT))
def test_rollback_matrix_under_load(start_server, tmp_path, kind):
    """Every way new code can fail at import rolls back under load: no failed request, the old
    pid keeps serving, and the next good upgrade works."""
    broken, why = BROKEN_AT_IMPORT[kind]
    app = seed_app(tmp_path)
    server, port = hotrun(start_server, tmp_path, "--no-reload", "--ready-timeout", "3")
    old_pid = server.generation_pids()[1]
    with Load(port, fresh=1, keepalive=1, slow=1, slow_seconds=0.5, max_seconds=60) as load:
        wait_until(lambda: load.report.requests > 10, 10, "load to start")
        set_version(app, "v2", extra=broken)
        mark = server.mark()
        os.kill(server.pid, signal.SIGHUP)
        server.wait_for(r"upgrade rolled back: generation 2 .*" + why, 20, mark)
        resp = http_get(port)
        assert (resp.pid, resp.version) == (old_pid, "v1")
        set_version(app, "v3")
        pid = server.upgrade(30)
        assert wait_served_by(port, pid).version == "v3"
        wait_until(lambda: pid in load.report.pids, 10, "the load to reach the fix")
        report = load.stop()
    assert_clean(report)
    assert old_pid in report.pids
    assert server.stop() == 0


@pytest.mark.timeout(90)
def test_idle_keepalive_clients_across_upgrades(start_server, tmp_path):
    """werkzeug's dev server has no keep-alive: every answer says ``Connection: close``, and
    clients that keep connections idle reconnect across 4 upgrades without one failure."""
    app = seed_app(tmp_path)
    server, port = hotrun(start_server, tmp_path, "--no-reload")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/hello")
        resp = conn.getresponse()
        resp.read()
        assert resp.getheader("Connection", "").lower() == "close" and resp.will_close
    finally:
        conn.close()
    with Load(port, fresh=0, keepalive=0, slow=0, idle=3, idle_seconds=0.5) as load:
        for number in range(2, 6):
            done = load.report.requests
            wait_until(lambda d=done: load.report.requests >= d + 3, 15, "a round of requests")
            set_version(app, f"v{number}")
            pid = server.upgrade(30)
            wait_until(lambda p=pid: p in load.report.pids, 15, f"idle clients on pid {pid}")
        report = load.stop()
    assert_clean(report)
    assert report.reconnects == report.requests  # each answer closed; each client reconnected
    assert "v5" in report.versions
    assert server.stop() == 0
