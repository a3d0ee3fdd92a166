"""``GRACE_READY_PATH`` with ``gunicorn -k grace_plugins.Worker``: a new worker answers the path
in-process before it counts as ready; code that imports but fails it is rolled back."""

from __future__ import annotations

import os
import re
import signal

import pytest

from tests.harness import Load, http_get
from tests.harness.gunicorn import assert_clean, start_gunicorn, version, write_code

pytest.importorskip("gunicorn")

READY_ENV = {"GRACE_READY_PATH": "/healthz"}
#: Code that imports fine and fails every request (``status()``: see tests/apps/gunicorn_app.py).
FAILS_AT_REQUEST = {
    "raises": "VERSION = 'v2'\ndef status(environ):\n    raise RuntimeError('the view is broken')\n",  # noqa: E501
    "answers 500": "VERSION = 'v2'\ndef status(environ):\n    return '500 Internal Server Error'\n",
}
#: /healthz answers *answer* to the check (marked, with the Host of the bound address), else 503.
CHECKED = (
    "VERSION = 'v2'\n"
    "def status(environ):\n"
    "    if environ['PATH_INFO'] != '/healthz':\n"
    "        return '200 OK'\n"
    "    if environ.get('HTTP_X_GRACE_READY_CHECK') != '1'"
    " or environ.get('HTTP_HOST') != '127.0.0.1:{port}':\n"
    "        return '503 Service Unavailable'\n"
    "    return {answer!r}\n"
)
HANGS_ON_CHECK = (
    "import time\nVERSION = 'v2'\n"
    "def status(environ):\n"
    "    if environ.get('HTTP_X_GRACE_READY_CHECK'):\n"
    "        time.sleep(3600)\n"
    "    return '200 OK'\n"
)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("kind", sorted(FAILS_AT_REQUEST))
def test_ready_check_failure_rolls_back(start_server, tmp_path, kind):
    """Code that imports but fails at request time never takes traffic: rolled back, 0 failed
    requests, then a good HUP serves. ``raises`` sets the variable through ``raw_env``."""
    if kind == "raises":
        conf = tmp_path / "gunicorn.conf.py"
        conf.write_text("raw_env = ['GRACE_READY_PATH=/healthz']\n")
        server = start_gunicorn(start_server, tmp_path, "-c", str(conf))
    else:
        server = start_gunicorn(start_server, tmp_path, env=READY_ENV)
    with Load(server.port, fresh=2, keepalive=2, slow=1, slow_seconds=1.0) as load:
        mark = server.broken_hup_then_fix(tmp_path, FAILS_AT_REQUEST[kind], 2)
        report = load.stop()
    assert_clean(report)
    out = server.output(mark)
    if kind == "raises":
        assert re.search(
            r"Traceback[^\n]*\n(.*\n)*.*RuntimeError: the view is broken\n(.*\n)*.*"
            r"ready check GET /healthz raised RuntimeError: the view is broken",
            out,
        ), out
    else:
        assert "ready check GET /healthz answered 500" in out
    assert server.stop() == 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("answer", ["404 Not Found", "302 Found"])
def test_ready_check_below_500_is_ready(start_server, tmp_path, answer):
    server = start_gunicorn(start_server, tmp_path, env=READY_ENV)
    write_code(tmp_path, CHECKED.format(port=server.port, answer=answer))
    new = server.hup(2)
    resp = http_get(server.port)
    assert (resp.version, resp.pid in new) == ("v2", True)
    assert http_get(server.port, "/healthz").status == 503  # a client's request: not the check
    assert "ready check" not in server.output()


@pytest.mark.timeout(60)
def test_ready_check_that_hangs_is_bounded_by_its_own_timeout(start_server, tmp_path):
    """A check that never answers is cut by its own bound (what is left of gunicorn's
    ``timeout``), which says so, before the boot watchdog (for an import that hangs) fires."""
    server = start_gunicorn(start_server, tmp_path, timeout=4, env=READY_ENV)
    with Load(server.port, fresh=2, keepalive=2, slow=1, slow_seconds=1.0) as load:
        write_code(tmp_path, HANGS_ON_CHECK)
        mark = server.mark()
        os.kill(server.pid, signal.SIGHUP)
        server.wait_rollback(2, mark)
        assert server.proc.poll() is None
        write_code(tmp_path, version("v3"))
        server.hup(3)
        report = load.stop()
    assert_clean(report)
    out = server.output(mark)
    assert re.search(r"generation 2 rolled back \(.*ready check GET /healthz did not answer", out)
    assert "does the app hang at import?" not in out, out


@pytest.mark.timeout(60)
def test_without_ready_path_nothing_changes(start_server, tmp_path):
    """The check is opt-in: without the variable, code that fails every request goes live."""
    server = start_gunicorn(start_server, tmp_path)
    write_code(tmp_path, FAILS_AT_REQUEST["answers 500"])
    server.hup(2)
    assert http_get(server.port).status == 500
    assert "ready check" not in server.output()


@pytest.mark.timeout(60)
def test_bad_ready_path_is_one_line(start_server, tmp_path):
    server = start_gunicorn(
        start_server, tmp_path, ready=False, env={"GRACE_READY_PATH": "healthz"}
    )
    assert server.proc.wait(30) != 0
    server.wait_for(r"GRACE_READY_PATH must be a URL path such as /healthz, not 'healthz'", 10)
