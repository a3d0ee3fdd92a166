"""The ready check (``--ready-path``): new code that imports but fails its requests never
takes traffic, in ``flask hotrun`` and ``manage.py runhot``, under load.

Each adapter runs an app whose ``/hello`` view can be broken (it raises), hung (it sleeps
60 s) or made to answer 302 to the check only (by the ``X-Grace-Ready-Check`` header), by
rewriting one file and upgrading.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import signal
import sys

import pytest

from tests.harness import PYTHON, ROOT, Load, http_get, wait_served_by

FLASK = os.path.join(os.path.dirname(sys.executable), "flask")
ROLLED_BACK = r"upgrade rolled back: generation (\d+) \(pid \d+\) exited \(exit status 4\)"

FLASK_APP = """
import os, time
from flask import Flask, redirect, request

VERSION = "{version}"
MODE = "{mode}"
app = Flask(__name__)


@app.get("/hello")
def hello():
    if MODE == "raise":
        raise RuntimeError("broken view on purpose")
    if MODE == "hang" and request.headers.get("X-Grace-Ready-Check") == "1":
        time.sleep(60)
    if MODE == "redirect" and request.headers.get("X-Grace-Ready-Check") == "1":
        return redirect("/")
    time.sleep(min(float(request.args.get("sleep", 0)), 60))
    return f"WORLD! ospid:{{os.getpid()}} version:{{VERSION}}\\n"
"""

DJANGO_VIEW = """

MODE = "{mode}"
_hello = hello


def hello(request):
    from django.shortcuts import redirect

    if MODE == "raise":
        raise RuntimeError("broken view on purpose")
    if MODE == "hang" and request.headers.get("X-Grace-Ready-Check") == "1":
        time.sleep(60)
    if MODE == "redirect" and request.headers.get("X-Grace-Ready-Check") == "1":
        return redirect("/")
    return _hello(request)
"""


class Site:
    """One adapter's app in a temporary directory, and how to start it and change it."""

    def __init__(self, kind: str, directory: pathlib.Path) -> None:
        self.kind = kind
        self.dir = directory
        if kind == "django":
            shutil.copytree(
                os.path.join(ROOT, "example_django"),
                directory,
                ignore=shutil.ignore_patterns("__pycache__", "*.sqlite3"),
            )
        else:
            directory.mkdir()
        self.write("v1", "ok")

    def write(self, version: str, mode: str) -> None:
        """Save the app as version *version* whose /hello behaves as *mode*."""
        if self.kind == "flask":
            path = self.dir / "app.py"
            text = FLASK_APP.format(version=version, mode=mode)
        else:
            path = self.dir / "example" / "views.py"
            original = pathlib.Path(ROOT, "example_django", "example", "views.py").read_text()
            text = re.sub(r"^VERSION = .*$", f"VERSION = {version!r}", original, flags=re.M)
            text += DJANGO_VIEW.format(mode=mode)
        path.write_text(text)

    def argv(self, *grace: str) -> list[str]:
        if self.kind == "flask":
            return [FLASK, "--app", "app.py", "hotrun", "-p", "0", *grace]
        return [PYTHON, "manage.py", "runhot", "127.0.0.1:0", "--noreload", *grace]

    def start(self, start_server, *grace: str):
        env = {"PYTHONDONTWRITEBYTECODE": "1", "EXAMPLE_LOG_REQUESTS": "0"}
        return start_server(self.argv(*grace), cwd=str(self.dir), env=env)


@pytest.fixture(params=["flask", "django"])
def site(request, tmp_path):
    if request.param == "flask" and not os.path.exists(FLASK):
        pytest.skip("flask is not installed")
    if request.param == "django":
        pytest.importorskip("django")
    return Site(request.param, tmp_path / "site")


def _upgrade_outcome(server, pattern: str, timeout: float = 30) -> re.Match[str]:
    mark = server.mark()
    os.kill(server.pid, signal.SIGHUP)
    return server.wait_for(pattern, timeout, mark)


@pytest.mark.timeout(120)
def test_view_that_raises_is_rolled_back_under_load(start_server, site):
    server = site.start(start_server, "--ready-path", "/hello")
    port = server.wait_ready(60)
    old_pid = server.generation_pids()[1]
    with Load(port, fresh=1, keepalive=1, slow=1, slow_seconds=1.0) as load:
        site.write("v2", "raise")
        _upgrade_outcome(server, ROLLED_BACK)
        assert "ready check GET /hello answered 500" in server.output()
        assert "RuntimeError: broken view on purpose" in server.output()
        resp = http_get(port)
        assert (resp.status, resp.pid, resp.version) == (200, old_pid, "v1")
        site.write("v3", "ok")
        pid = server.upgrade(60)
        assert wait_served_by(port, pid).version == "v3"
        report = load.stop()
    assert not report.failures, report.summary()
    assert report.versions <= {"v1", "v3"}, report.summary()
    assert re.search(r"ready check GET /hello answered 200 in \d+ ms", server.output())
    assert server.stop() == 0


@pytest.mark.timeout(120)
def test_without_the_option_the_broken_view_goes_live(start_server, site):
    """The control: what the check prevents does happen without it."""
    server = site.start(start_server)
    port = server.wait_ready(60)
    site.write("v2", "raise")
    pid = server.upgrade(60)
    assert "ready check" not in server.output()
    assert wait_served_by_status(port, 500, pid)
    assert server.stop() == 0


def wait_served_by_status(port: int, status: int, pid: int) -> bool:
    """Whether a request soon answers *status* (the old generation may accept one more)."""
    from tests.harness import wait_until

    return bool(wait_until(lambda: http_get(port).status == status, 10, f"a {status}"))


@pytest.mark.timeout(120)
def test_404_and_302_are_ready(start_server, site):
    server = site.start(start_server, "--ready-path", "/no-such-page")
    port = server.wait_ready(60)
    assert "ready check GET /no-such-page answered 404" in server.output()
    site.write("v2", "redirect")
    server.upgrade(60)
    assert http_get(port).version in ("v1", "v2")
    server.stop()

    site.write("v1", "redirect")
    server = site.start(start_server, "--ready-path", "/hello")
    port = server.wait_ready(60)
    assert "ready check GET /hello answered 302" in server.output()
    site.write("v2", "redirect")
    pid = server.upgrade(60)
    assert wait_served_by(port, pid).version == "v2"
    assert server.stop() == 0


@pytest.mark.timeout(120)
def test_hanging_check_is_bounded_by_the_ready_timeout(start_server, site):
    server = site.start(start_server, "--ready-path", "/hello", "--ready-timeout", "4")
    port = server.wait_ready(60)
    old_pid = server.generation_pids()[1]
    site.write("v2", "hang")
    _upgrade_outcome(server, ROLLED_BACK, timeout=20)
    # bounded by what is left of the 4 s ready timeout (from the process's start), less the
    # margin that lets the generation, not the supervisor's deadline, say what happened
    found = re.search(r"ready check GET /hello did not answer within ([\d.]+) s", server.output())
    assert found and 0.1 <= float(found.group(1)) <= 3.5, found
    resp = http_get(port)
    assert (resp.pid, resp.version) == (old_pid, "v1")
    site.write("v3", "ok")
    pid = server.upgrade(60)
    assert wait_served_by(port, pid).version == "v3"
    assert server.stop() == 0


@pytest.mark.timeout(120)
def test_failing_check_at_first_start_stops_with_the_reason(start_server, site):
    site.write("v1", "raise")
    server = site.start(start_server, "--ready-path", "/hello")
    assert server.proc.wait(60) == 4
    out = server.output()
    assert "ready check GET /hello answered 500" in out
    assert "the app failed to start" in out
