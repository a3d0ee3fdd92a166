"""Broken new code through ``flask hotrun`` is rolled back: a broken save or HUP, a hang at
import, and every way new code can fail at import (the harness's one table) under load; the
next good upgrade works."""

from __future__ import annotations

import os
import signal

import pytest

from tests.harness import READY_LINE, Load, broken_at_import, http_get, wait_served_by, wait_until
from tests.harness.flask_site import (
    FLASK,
    NOT_THE_REPO,
    assert_clean,
    hotrun,
    seed_app,
    set_version,
)

pytestmark = pytest.mark.skipif(not os.path.exists(FLASK), reason="flask is not installed")


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


#: Every way new code can fail at import (tests/harness/code.py), with its rollback line.
HANG_READY = 3
BROKEN_AT_IMPORT = broken_at_import(HANG_READY, import_error=2)  # as flask run


@pytest.mark.timeout(90)
@pytest.mark.parametrize("kind", list(BROKEN_AT_IMPORT))
def test_rollback_matrix_under_load(start_server, tmp_path, kind):
    """Every way new code can fail at import rolls back under load: no failed request, the old
    pid keeps serving, and the next good upgrade works."""
    broken, why = BROKEN_AT_IMPORT[kind]
    app = seed_app(tmp_path)
    # a short ready timeout for the hang (it costs each run that long); a real one otherwise,
    # so that a slow start on a busy machine is not taken for the failure under test
    ready = str(HANG_READY) if kind == "hang" else "30"
    server, port = hotrun(start_server, tmp_path, "--no-reload", "--ready-timeout", ready)
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
