"""Every save counts: a watched file saved after a generation began loading, and before its
watcher's first scan, triggers an upgrade (issue 13, item 3).

A generation's watcher starts when the generation is ready; its first scan takes the mtimes it
finds as the baseline, so a save made while the app was importing would be invisible to it. The
apps here make that window certain instead of likely: their import prints a line, then waits
(bounded) for a ``go`` file the test creates *after* it has saved the file under test. Nothing
sleeps to synchronise; every wait is on a line the server prints or a page it answers.

The apps are what a developer meets: an optional module (``pages.py``) whose import failed at
load, so the page that needs it is a 500, fixed by a save while the app still imports; a module
the app imported (``views.py``) and one it imports on first use (``later.py``) saved during the
import.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.harness import PYTHON, ROOT, http_get, server_env, wait_until

FLASK = os.path.join(os.path.dirname(sys.executable), "flask")
#: The repository is on PYTHONPATH: work there must not trigger upgrades here.
NOT_THE_REPO = os.path.join(ROOT, "*")
#: Every test process writes no bytecode: an edit can never run a stale ``.pyc``.
ENV = {"PYTHONDONTWRITEBYTECODE": "1"}

PAGES_FAILED = r"app: pages failed to import: RuntimeError\('pages is broken'\) \(pid {pid}\)"

SLOW = """\
# A slow import (a big library, a warm cache): here it waits, bounded, for the test's go file
# (go-PID lets one process through, go every process).
import os
import time

print(f"app: slow import started (pid {os.getpid()})", flush=True)
_here = os.path.dirname(os.path.abspath(__file__))
_go = [os.path.join(_here, name) for name in ("go", f"go-{os.getpid()}")]
_deadline = time.monotonic() + 60
while not any(map(os.path.exists, _go)) and time.monotonic() < _deadline:
    time.sleep(0.02)
"""
BROKEN_PAGES = 'raise RuntimeError("pages is broken")\n'
FIXED_PAGES = 'TEXT = "pages fixed"\n'
LATER = 'TEXT = "later v1"\n'

FLASK_APP = """\
import os

from flask import Flask

import views

try:
    import pages
except Exception as exc:  # an optional module: the app starts without it
    pages = None
    failure = repr(exc)
    print(f"app: pages failed to import: {failure} (pid {os.getpid()})", flush=True)

import slow  # noqa: F401

app = Flask(__name__)


@app.get("/page")
def page():
    if pages is None:
        raise RuntimeError(f"pages failed to import: {failure}")
    return f"{pages.TEXT} ospid:{os.getpid()}"


@app.get("/hello")
def hello():
    return f"hello ospid:{os.getpid()} version:{views.VERSION}"


@app.get("/later")
def later_page():
    import later

    return f"{later.TEXT} ospid:{os.getpid()}"
"""

RUN_SIMPLE = """\
import sys

from grace_plugins import run_simple

from app import app  # the app is imported before run_simple is called

if __name__ == "__main__":
    run_simple(
        "127.0.0.1", 0, app, use_reloader=True, reloader_type=sys.argv[1],
        reloader_interval=0.2, exclude_patterns=[sys.argv[2]],
    )
"""

MANAGE = """\
import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
"""
SETTINGS = """\
SECRET_KEY = "tests-only"
DEBUG = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = ["django.contrib.staticfiles", "grace_plugins.django"]
MIDDLEWARE = []
ROOT_URLCONF = "proj.urls"
DATABASES = {}
STATIC_URL = "static/"
USE_TZ = True
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "loggers": {"django.server": {"level": "WARNING"}},
}
"""
URLS = """\
import os

from django.http import HttpResponse
from django.urls import path

from proj import views

try:
    from proj import pages
except Exception as exc:  # an optional module: the site starts without it
    pages = None
    failure = repr(exc)
    print(f"app: pages failed to import: {failure} (pid {os.getpid()})", flush=True)

from proj import slow  # noqa: E402,F401


def page(request):
    if pages is None:
        raise RuntimeError(f"pages failed to import: {failure}")
    return HttpResponse(f"{pages.TEXT} ospid:{os.getpid()}", content_type="text/plain")


def hello(request):
    body = f"hello ospid:{os.getpid()} version:{views.VERSION}"
    return HttpResponse(body, content_type="text/plain")


urlpatterns = [path("page", page), path("hello", hello)]
"""


def views_source(version: str) -> str:
    return f"VERSION = {version!r}\n"


# -- helpers -------------------------------------------------------------------------------------
def save(path, text: str) -> None:
    """Write *text* as an editor saves it: one write, an mtime newer than before (never dated in
    the future: a reloader ignores those)."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text)
    after = path.stat().st_mtime_ns
    if after <= before:
        os.utime(path, ns=(before + 1_000_000, before + 1_000_000))


def flask_project(directory) -> None:
    save(directory / "app.py", FLASK_APP)
    save(directory / "serve.py", RUN_SIMPLE)
    save(directory / "slow.py", SLOW)
    save(directory / "views.py", views_source("v1"))
    save(directory / "pages.py", BROKEN_PAGES)
    save(directory / "later.py", LATER)


def django_project(directory):
    """A small Django project in *directory*; returns its package directory."""
    package = directory / "proj"
    package.mkdir()
    save(directory / "manage.py", MANAGE)
    save(package / "__init__.py", "")
    save(package / "settings.py", SETTINGS)
    save(package / "urls.py", URLS)
    save(package / "slow.py", SLOW)
    save(package / "views.py", views_source("v1"))
    save(package / "pages.py", BROKEN_PAGES)
    return package


#: How a Flask app is served with the reloader on: ``flask hotrun --reload`` (werkzeug's
#: ``auto`` loop: watchdog when installed, as in the dev extras), and ``run_simple`` from a
#: script that imports the app first, with the stat loop.
FLASK_WAYS = {
    "hotrun": lambda: [FLASK, "--app", "app.py", "hotrun", "-p", "0", "--reload",
                       f"--exclude-patterns={NOT_THE_REPO}"],
    "run_simple-stat": lambda: [PYTHON, "serve.py", "stat", NOT_THE_REPO],
}  # fmt: skip


def start_flask(start_server, directory, way: str):
    if way == "hotrun" and not os.path.exists(FLASK):
        pytest.skip("flask is not installed")
    return start_server(FLASK_WAYS[way](), cwd=str(directory), env=ENV)


def start_django(start_server, directory):
    pytest.importorskip("django")
    argv = [PYTHON, "manage.py", "runhot", "127.0.0.1:0", "--ready-timeout", "60"]
    return start_server(argv, cwd=str(directory), env=ENV)


def wait_loading(server, directory) -> int:
    """Wait until the first generation is in its slow import; return its pid. The supervisor
    of a ``run_simple`` script runs the script too (it imports the app before it calls
    ``run_simple``): its own slow import is let through at once."""
    (directory / f"go-{server.pid}").write_text("")
    found = server.wait_for(rf"app: slow import started \(pid (?!{server.pid}\))(\d+)\)", 60)
    return int(found.group(1))


def let_the_import_finish(server, directory) -> int:
    """Create the go file the app's slow import waits for (beside ``slow.py``, in
    *directory*); return the port the first generation serves."""
    (directory / "go").write_text("")
    return server.wait_ready(60)


def wait_upgraded_for(server, name: str, timeout: float = 30.0) -> None:
    """Wait until the first generation asked for an upgrade naming *name* and the second
    generation is ready; fail saying which did not happen."""
    server.wait_for(rf"upgrade started \(file changed: \S*{name}", timeout)
    server.wait_for(r"generation 2 \(pid \d+\) ready after", timeout)


def wait_answer(server, port: int, path: str, text: str, timeout: float = 20.0):
    """Wait for generation 2 to answer *path* with a 200 holding *text*: the old generation may
    accept for one more poll interval (and it imports ``later.py`` fresh, too)."""
    pid = server.generation_pids()[2]
    seen: list[str] = []

    def probe():
        resp = http_get(port, path)
        seen.append(f"{resp.status} {resp.body[:80]!r}")
        return resp.status == 200 and text in resp.body and resp.pid == pid

    try:
        wait_until(probe, timeout, f"{path} answering {text!r} from pid {pid}")
    except AssertionError:
        raise AssertionError(f"{path} never answered {text!r} from {pid}: {seen[-3:]}") from None


# -- a module whose import failed, fixed before the watcher's first scan ---------------------------
@pytest.mark.timeout(120)
@pytest.mark.parametrize("way", list(FLASK_WAYS))
def test_flask_failed_import_fixed_during_load_upgrades(start_server, tmp_path, way):
    flask_project(tmp_path)
    server = start_flask(start_server, tmp_path, way)
    pid = wait_loading(server, tmp_path)
    server.wait_for(PAGES_FAILED.format(pid=pid), 10)
    save(tmp_path / "pages.py", FIXED_PAGES)  # the fix, while the app still imports
    port = let_the_import_finish(server, tmp_path)
    wait_upgraded_for(server, "pages.py")
    wait_answer(server, port, "/page", "pages fixed")
    assert server.stop() == 0


@pytest.mark.timeout(120)
def test_django_failed_import_fixed_during_load_upgrades(start_server, tmp_path):
    package = django_project(tmp_path)
    server = start_django(start_server, tmp_path)
    pid = wait_loading(server, package)
    server.wait_for(PAGES_FAILED.format(pid=pid), 10)
    save(package / "pages.py", FIXED_PAGES)
    port = let_the_import_finish(server, package)
    wait_upgraded_for(server, "pages.py")
    wait_answer(server, port, "/page", "pages fixed")
    assert server.stop() == 0


# -- a file saved while the generation loads -------------------------------------------------------
@pytest.mark.timeout(120)
@pytest.mark.parametrize("way", list(FLASK_WAYS))
@pytest.mark.parametrize("name", ["views.py", "later.py"])
def test_flask_save_during_load_upgrades(start_server, tmp_path, way, name):
    """``views.py`` was imported before the save, ``later.py`` is imported on first use: both
    are watched (werkzeug's loops watch the project's Python files), so both saves count."""
    flask_project(tmp_path)
    server = start_flask(start_server, tmp_path, way)
    wait_loading(server, tmp_path)
    if name == "views.py":
        save(tmp_path / name, views_source("v2"))
    else:
        save(tmp_path / name, 'TEXT = "later v2"\n')
    port = let_the_import_finish(server, tmp_path)
    wait_upgraded_for(server, name)
    if name == "views.py":
        wait_answer(server, port, "/hello", "version:v2")
    else:
        wait_answer(server, port, "/later", "later v2")
    assert server.stop() == 0


@pytest.mark.timeout(120)
def test_django_save_during_load_upgrades(start_server, tmp_path):
    package = django_project(tmp_path)
    server = start_django(start_server, tmp_path)
    wait_loading(server, package)
    save(package / "views.py", views_source("v2"))  # imported already, with v1
    port = let_the_import_finish(server, package)
    wait_upgraded_for(server, "views.py")
    wait_answer(server, port, "/hello", "version:v2")
    assert server.stop() == 0


@pytest.mark.timeout(120)
@pytest.mark.parametrize("way", list(FLASK_WAYS))
def test_flask_only_saved_files_count(start_server, tmp_path, way):
    """The catch-up counts saves, not the files written before the server started, nor what
    the import itself touches: a save after the watch began is reported alone."""
    flask_project(tmp_path)
    server = start_flask(start_server, tmp_path, way)
    port = let_the_import_finish(server, tmp_path)
    server.wait_for(r"watching \d+ files and \d+ globs: what generation 1 loaded", 30)
    save(tmp_path / "later.py", 'TEXT = "later v2"\n')
    found = server.wait_for(r"upgrade started \(file changed: (\S+?)( \(and \d+ more\))?\)", 30)
    assert (os.path.basename(found.group(1)), found.group(2)) == ("later.py", None)
    server.wait_for(r"generation 2 \(pid \d+\) ready after", 30)
    wait_answer(server, port, "/later", "later v2")
    assert server.stop() == 0


def test_process_start_time_is_the_exec():
    """The catch-up's "load began" is the process start: after the save that triggered the
    upgrade, before any import of the new code."""
    if not os.path.exists("/proc/self/stat"):
        pytest.skip("no /proc")
    code = "from grace_plugins.process import process_start_time; print(repr(process_start_time()))"
    before = time.time()
    out = subprocess.run(
        [PYTHON, "-c", code], capture_output=True, text=True, timeout=60, env=server_env(ENV)
    )
    after = time.time()
    assert out.returncode == 0, out.stderr
    assert before <= float(out.stdout) <= after
