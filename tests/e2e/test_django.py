"""The Django adapter: ``python manage.py runhot`` on a copy of ``example_django/``.

End-to-end tests start real ``manage.py runhot`` processes and wait on the lines they print;
the project is copied into a temporary directory so tests can edit its code (bytecode caching
is off there: a same-second, same-size edit could otherwise run a stale ``.pyc``). The
in-process tests at the end use pytest-django's fixtures with settings configured for this
module only (``tests/django_settings.py``); nothing here sets ``DJANGO_SETTINGS_MODULE`` for
other test files.
"""

from __future__ import annotations

import http.client
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import threading

import pytest

from tests.harness import (
    PYTHON,
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

django = pytest.importorskip("django")

EXAMPLE = os.path.join(ROOT, "example_django")
READY_AFTER = r"generation (\d+) \(pid (\d+)\) ready after (\d+) ms"
ROLLED_BACK = r"upgrade rolled back"


# -- helpers -------------------------------------------------------------------------------------
@pytest.fixture
def site(tmp_path):
    """A copy of the example project the test may edit."""
    target = tmp_path / "site"
    shutil.copytree(EXAMPLE, target, ignore=shutil.ignore_patterns("__pycache__", "*.sqlite3"))
    return target


def runhot(start_server, site, *args, env=None, address="127.0.0.1:0"):
    """Start ``manage.py runhot`` in *site*; wait for the first generation; return it."""
    server = start_server(
        [PYTHON, "manage.py", "runhot", address, *args],
        cwd=str(site),
        env={"PYTHONDONTWRITEBYTECODE": "1", "EXAMPLE_LOG_REQUESTS": "0", **(env or {})},
    )
    server.wait_ready(60)
    return server


def set_version(site, version, extra=""):
    """Rewrite the example's views.py with this VERSION (and *extra* code at the end)."""
    views = site / "example" / "views.py"
    original = (pathlib.Path(EXAMPLE) / "example" / "views.py").read_text()
    text = re.sub(r"^VERSION = .*$", f"VERSION = {version!r}", original, flags=re.M)
    if extra:
        text += "\n" + extra + "\n"
    save(views, text)


def save(path, text):
    """Write *text* as an editor saves it, with an mtime newer than before (the stat reloader
    compares mtimes)."""
    before = path.stat().st_mtime_ns
    path.write_text(text)
    after = path.stat().st_mtime_ns
    if after <= before:
        os.utime(path, ns=(before + 10_000_000, before + 10_000_000))


def next_ready(server, mark, timeout=60):
    """Wait for the next generation's ready line after *mark*; return its pid."""
    return int(server.wait_for(READY_AFTER, timeout, after=mark).group(2))


def first_pid(server):
    return server.generation_pids()[1]


# -- the command line ----------------------------------------------------------------------------
def test_help_lists_runserver_options_and_ours():
    def options(command):
        out = subprocess.run(
            [PYTHON, "manage.py", command, "--help"],
            cwd=EXAMPLE,
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        )
        assert out.returncode == 0, out.stderr
        return set(re.findall(r"(?<![\w-])(--?[a-zA-Z][\w-]*)", out.stdout)), out.stdout

    runserver, _ = options("runserver")
    runhot, text = options("runhot")
    assert {"--nostatic", "--insecure", "--ipv6", "--nothreading", "--noreload"} <= runserver
    assert runserver <= runhot, f"missing from runhot --help: {runserver - runhot}"
    assert {"--pidfile", "--ready-timeout", "--drain-timeout"} <= runhot
    assert "kill -HUP" in text


def test_bad_timeout_is_a_one_line_error():
    out = subprocess.run(
        [PYTHON, "manage.py", "runhot", "--ready-timeout", "soon"],
        cwd=EXAMPLE,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert out.returncode != 0
    assert "argument --ready-timeout: must be a number of seconds > 0, not 'soon'" in out.stderr
    assert "Traceback" not in out.stderr


# -- the seed scenario ---------------------------------------------------------------------------
@pytest.mark.timeout(120)
def test_seed_scenario(start_server, site, tmp_path):
    pidfile = tmp_path / "runhot.pid"
    server = runhot(start_server, site, "--noreload", "--pidfile", str(pidfile))
    port, old = server.port, first_pid(server)
    assert int(pidfile.read_text().strip()) == server.pid
    out = server.output()
    assert "Starting development server at http://127.0.0.1:" in out
    assert f"Hot upgrade: kill -HUP {server.pid} (generation 1, pid {old})" in out
    assert "Watching for file changes" not in out  # --noreload
    # Django's pages, template and static files (DEBUG is on).
    assert http_get(port, "/hello").body == f"WORLD! ospid:{old} version:v1\n"
    page = http_get(port, "/")
    assert (
        page.status == 200
        and "template:t1" in page.body
        and "/static/example/style.css" in page.body
    )
    static = http_get(port, "/static/example/style.css")
    assert static.status == 200 and "font-family" in static.body

    # A slow request in flight on the old generation (its keep-alive connection was accepted
    # there), new code on disk, kill -HUP: the old one finishes it, the new one serves.
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/hello")
    first = conn.getresponse()
    assert f"ospid:{old}" in first.read().decode()
    conn.request("GET", "/hello?sleep=2")
    set_version(site, "v2")
    new = server.upgrade(60)
    fresh = wait_served_by(port, new)
    assert fresh.version == "v2"
    slow = conn.getresponse()
    body = slow.read().decode()
    conn.close()
    assert slow.status == 200 and body == f"WORLD! ospid:{old} version:v1\n"
    server.wait_for(rf"generation 1 \(pid {old}\) exited after draining", 30)
    assert server.stop() == 0
    assert not pidfile.exists()


# -- zero failures under load --------------------------------------------------------------------
@pytest.mark.timeout(170)
def test_upgrades_under_load_hup_and_file_saves(start_server, site):
    server = runhot(start_server, site, "--ready-timeout", "30", "--drain-timeout", "15")
    port = server.port
    pids = [first_pid(server)]
    server.wait_warm(60)
    fds = None
    with Load(port, fresh=2, keepalive=2, slow=1, slow_seconds=1.0, max_seconds=150) as load:
        wait_until(lambda: load.report.requests > 20, 20, "the first requests")
        for _ in range(10):
            pids.append(server.upgrade(60))
            if fds is None:
                fds = fd_count(server.pid)
        for version in ("v2", "v3", "v4"):
            mark = server.mark()
            set_version(site, version)
            pids.append(next_ready(server, mark))
            wait_served_by(port, pids[-1])
        wait_until(lambda: "v4" in load.report.versions, 20, "the load to reach v4")
        wait_until(lambda: load.report.slow_completed >= 3, 20, "slow requests to complete")
    report = load.stop()
    assert not report.failures, report.summary()
    assert report.slow_completed == report.slow_started, report.summary()
    assert report.requests > 200, report.summary()
    assert {"v1", "v4"} <= report.versions, report.summary()
    assert http_get(port).version == "v4"
    assert len(set(pids)) == 14
    out = server.output()
    assert out.count("upgrade started (requested by generation") >= 3  # the saves
    assert ROLLED_BACK not in out
    server.wait_for(rf"\(pid {pids[-2]}\) exited after draining", 30)
    if fds is not None:
        assert fd_count(server.pid) <= fds, "the supervisor leaks fds"
    wait_until(lambda: not zombies(server.pid), 5, "no zombie children")
    assert server.stop() == 0


# -- broken code is rolled back ------------------------------------------------------------------
def _views_syntax_error(site):
    set_version(site, "broken", extra="def oops(:\n    pass")


def _settings_error(site):
    settings = site / "example" / "settings.py"
    save(
        settings,
        settings.read_text()
        + "\nfrom django.core.exceptions import ImproperlyConfigured\n"
        + "raise ImproperlyConfigured('example: settings broken on purpose')\n",
    )


def _failing_check(site):
    set_version(site, "")


def _hang_at_import(site):
    set_version(site, "hang", extra="time.sleep(600)")


BREAKAGES = {
    "view-syntax-error": (_views_syntax_error, r"SyntaxError"),
    "settings-error": (_settings_error, r"ImproperlyConfigured: example: settings broken"),
    "failing-check": (_failing_check, r"example\.E001"),
    "hang-at-import": (_hang_at_import, r"was not ready within 10 s"),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", list(BREAKAGES))
def test_broken_save_is_rolled_back_and_fixing_upgrades(start_server, site, kind):
    break_it, error = BREAKAGES[kind]
    settings_text = (site / "example" / "settings.py").read_text()
    # A short ready timeout for the hang (each broken start costs it); a real one otherwise.
    ready_timeout = "10" if kind == "hang-at-import" else "30"
    server = runhot(start_server, site, "--ready-timeout", ready_timeout)
    port, old = server.port, first_pid(server)
    with Load(port, fresh=1, keepalive=1, slow=0, max_seconds=80) as load:
        mark = server.mark()
        break_it(site)
        server.wait_for(ROLLED_BACK, 30, after=mark)
        server.wait_for(error, 5, after=mark)
        still = http_get(port)
        assert (still.pid, still.version) == (old, "v1")
        # The fix: the old generation is still watching, and upgrades.
        mark = server.mark()
        settings = site / "example" / "settings.py"
        if settings.read_text() != settings_text:
            save(settings, settings_text)
        set_version(site, "fixed")
        new = next_ready(server, mark)
        assert wait_served_by(port, new).version == "fixed"
        wait_until(lambda: "fixed" in load.report.versions, 20, "the load to reach the fix")
    report = load.stop()
    assert not report.failures, report.summary()
    assert "v1" in report.versions
    assert server.stop() == 0


# -- options -------------------------------------------------------------------------------------
@pytest.mark.timeout(90)
def test_nothreading_and_noreload_upgrade_on_hup(start_server, site):
    server = runhot(start_server, site, "--nothreading", "--noreload")
    port, old = server.port, first_pid(server)
    first = http_get(port)
    assert first.pid == old
    assert first.headers.get("connection") == "close"  # Django: no keep-alive without threads
    with Load(port, fresh=2, keepalive=1, slow=1, slow_seconds=0.5, max_seconds=80) as load:
        wait_until(lambda: load.report.slow_completed >= 1, 20, "a slow request")
        set_version(site, "v2")
        new = server.upgrade(60)
        assert wait_served_by(port, new).version == "v2"
        new2 = server.upgrade(60)
        wait_served_by(port, new2)
    report = load.stop()
    assert not report.failures, report.summary()
    assert report.slow_completed == report.slow_started
    assert "upgrade started (requested by" not in server.output()
    assert server.stop() == 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("flags", "status"), [((), 404), (("--insecure",), 200)])
def test_static_files_without_debug_need_insecure(start_server, site, flags, status):
    server = runhot(start_server, site, "--noreload", *flags, env={"EXAMPLE_DEBUG": "0"})
    assert http_get(server.port, "/hello").version == "v1"
    assert http_get(server.port, "/static/example/style.css").status == status
    assert server.stop() == 0


def _has_ipv6_loopback():
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.timeout(60)
@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback")
def test_ipv6_addrport(start_server, site):
    server = runhot(start_server, site, "--noreload", address="[::1]:0")
    assert "serving tcp:[::1]:" in server.output()
    assert "Starting development server at http://[::1]:" in server.output()
    old = first_pid(server)
    assert http_get(server.port, host="::1").pid == old
    new = server.upgrade(60)
    wait_served_by_host(server.port, new, "::1")
    assert server.stop() == 0


def wait_served_by_host(port, pid, host):
    return wait_until(
        lambda: http_get(port, host=host).pid == pid, 20, f"a response from pid {pid}"
    )


@pytest.mark.timeout(60)
def test_template_save_upgrades(start_server, site):
    server = runhot(start_server, site)
    old = first_pid(server)
    assert "template:t1" in http_get(server.port, "/").body
    template = site / "example" / "templates" / "example" / "index.html"
    mark = server.mark()
    save(template, template.read_text().replace("template:t1", "template:t2"))
    new = next_ready(server, mark)
    assert new != old
    page = wait_served_by(server.port, new, path="/")
    assert "template:t2" in page.body
    assert server.stop() == 0


@pytest.mark.timeout(60)
def test_settings_option_and_unapplied_migrations_warning(start_server, site, tmp_path):
    """--settings reaches every generation; Django's migration warning is printed."""
    (site / "example" / "settings_db.py").write_text(
        "from example.settings import *  # noqa: F403\n"
        "INSTALLED_APPS = ['django.contrib.contenttypes', *INSTALLED_APPS]  # noqa: F405\n"
        f"DATABASES = {{'default': {{'ENGINE': 'django.db.backends.sqlite3',"
        f" 'NAME': {str(tmp_path / 'db.sqlite3')!r}}}}}\n"
    )
    server = runhot(start_server, site, "--noreload", "--settings", "example.settings_db")
    out = server.output()
    assert "using settings 'example.settings_db'" in out
    assert re.search(r"You have \d+ unapplied migration", out)
    new = server.upgrade(60)
    wait_served_by(server.port, new)
    assert server.output().count("using settings 'example.settings_db'") == 2
    assert server.stop() == 0


def test_hup_to_generation_and_term_stop(start_server, site):
    """A HUP sent to the serving generation instead of the supervisor still upgrades."""
    server = runhot(start_server, site, "--noreload")
    old = first_pid(server)
    new = server.upgrade(60, sig=signal.SIGHUP, pid=old)
    assert new != old
    wait_served_by(server.port, new)
    assert server.stop() == 0


# -- in process (pytest-django) ------------------------------------------------------------------
@pytest.fixture(scope="module")
def django_configured():
    """Django set up in this process with tests/django_settings.py, for this module's
    in-process tests only (no DJANGO_SETTINGS_MODULE left in the environment)."""
    pytest.importorskip("pytest_django")
    from django.conf import settings

    if not settings.configured:
        from tests import django_settings

        settings.configure(**{k: v for k, v in vars(django_settings).items() if k.isupper()})
        django.setup()
    return settings


def test_drain_says_connection_close_in_process(django_configured, settings):
    """Django's threaded server on a listener: keep-alive until the drain, then
    ``Connection: close`` on the next response of the same connection."""
    from django.core.servers.basehttp import WSGIServer, get_internal_wsgi_application

    from grace_plugins.django.server import hot_server_class, stop_soon
    from grace_plugins.drain import ConnectionTracker

    settings.DEBUG = True
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.setblocking(False)
    tracker = ConnectionTracker(keepalive_timeout=5)
    serving = threading.Event()
    cls = hot_server_class(
        WSGIServer,
        listener=listener,
        tracker=tracker,
        threaded=True,
        on_serving=lambda server: serving.set(),
    )
    server = cls(("127.0.0.1", 0), None)
    server.set_app(get_internal_wsgi_application())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert serving.wait(10)
        conn = http.client.HTTPConnection("127.0.0.1", listener.getsockname()[1], timeout=10)
        conn.request("GET", "/hello")
        first = conn.getresponse()
        assert first.read() == f"ospid:{os.getpid()}".encode()
        assert not first.will_close
        wait_until(lambda: tracker.counts() == (0, 1), 5, "an idle keep-alive connection")
        tracker.begin_drain()
        conn.request("GET", "/hello")
        second = conn.getresponse()
        assert second.read() == f"ospid:{os.getpid()}".encode()
        assert second.getheader("Connection") == "close" and second.will_close
        conn.close()
        report = tracker.drain(5)
        assert report.closed_at_deadline == 0
    finally:
        stop_soon(server)()
        thread.join(5)
        server.server_close()
        listener.close()


def test_watcher_sees_a_template_change_in_process(django_configured, tmp_path, settings):
    """Django's autoreloader, with the directories its receivers add (templates), reports a
    change to the callback instead of exiting."""
    from django.template import engines

    from grace_plugins.django.reloader import HotWatcher

    template = tmp_path / "page.html"
    template.write_text("one")
    settings.TEMPLATES = [
        {"BACKEND": "django.template.backends.django.DjangoTemplates", "DIRS": [str(tmp_path)]}
    ]
    assert engines["django"].engine.dirs == [str(tmp_path)]
    changes: list[list[str]] = []
    watcher = HotWatcher(changes.append)
    watcher.reloader.SLEEP_TIME = 0.05
    try:
        assert watcher.start(10)
        save(template, "two")
        wait_until(lambda: changes, 10, "the template change to be reported")
    finally:
        watcher.stop()
    assert changes[0] == [str(template)]


@pytest.mark.timeout(120)
def test_grace_plugins_reload_through_runhot(start_server, site):
    """``grace-plugins reload --pidfile`` waits for the outcome of a runhot upgrade."""

    pidfile = str(site / "runhot.pid")
    server = runhot(start_server, site, "--noreload", f"--pidfile={pidfile}")
    set_version(site, "v2")
    good = grace_cli("reload", "--pidfile", pidfile)
    assert good.returncode == 0, good.stderr
    assert good.stdout.startswith("upgraded: generation 2 (pid ")
    wait_until(lambda: "version:v2" in http_get(server.port).body, 10, "v2 served")
    set_version(site, "v3", extra="raise RuntimeError('broken on purpose')")
    bad = grace_cli("reload", "--pidfile", pidfile)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert bad.stderr.startswith("rolled back: generation 3 ")
    assert "version:v2" in http_get(server.port).body
    assert server.stop() == 0


# -- issue 16: the rollback matrix and idle keep-alive clients, through runhot -------------------
#: Every way new code can fail at import (tests/harness/code.py), with its rollback line.
BROKEN_VIEWS = broken_at_import(10)


@pytest.mark.timeout(150)
@pytest.mark.parametrize("kind", list(BROKEN_VIEWS))
def test_rollback_matrix_under_load(start_server, site, kind):
    """Every way new code can fail at import rolls back under load (HUP): no failed request,
    the old pid keeps serving, the next good upgrade works."""
    broken, why = BROKEN_VIEWS[kind]
    server = runhot(start_server, site, "--noreload", "--ready-timeout", "10")
    port, old = server.port, first_pid(server)
    with Load(port, fresh=1, keepalive=1, slow=1, slow_seconds=0.5, max_seconds=100) as load:
        wait_until(lambda: load.report.requests > 10, 15, "load to start")
        set_version(site, "broken", extra=broken)
        mark = server.mark()
        os.kill(server.pid, signal.SIGHUP)
        server.wait_for(r"upgrade rolled back: generation 2 .*" + why, 40, after=mark)
        still = http_get(port)
        assert (still.pid, still.version) == (old, "v1")
        set_version(site, "fixed")
        new = server.upgrade(60)
        assert wait_served_by(port, new).version == "fixed"
        wait_until(lambda: new in load.report.pids, 15, "the load to reach the fix")
        report = load.stop()
    assert not report.failures, report.summary()
    assert report.slow_completed == report.slow_started, report.summary()
    assert old in report.pids
    assert server.stop() == 0


@pytest.mark.timeout(150)
def test_idle_keepalive_clients_across_four_upgrades(start_server, site):
    """The threaded runserver keeps connections alive: clients idle between requests (less
    than the keep-alive timeout) across 4 upgrades see no failure."""
    server = runhot(start_server, site, "--noreload")
    port = server.port
    with Load(
        port, fresh=0, keepalive=0, slow=0, idle=3, idle_seconds=1.0, max_seconds=120
    ) as load:
        for number in range(2, 6):
            done = load.report.requests
            wait_until(lambda d=done: load.report.requests >= d + 3, 20, "a round of requests")
            set_version(site, f"v{number}")
            new = server.upgrade(60)
            wait_until(lambda p=new: p in load.report.pids, 20, f"idle clients on pid {new}")
        report = load.stop()
    assert not report.failures, report.summary()
    assert report.reconnects < report.requests  # connections really were kept alive
    assert "v5" in report.versions
    assert server.stop() == 0
