"""Broken new code is rolled back, through the core test server (tests/apps/core_server.py):
every way new code can fail at import (the harness's one table), under load, and a first
generation that cannot start."""

from __future__ import annotations

import os
import signal

import pytest

from tests.harness import (
    PYTHON,
    Load,
    broken_at_import,
    grace_cli,
    http_get,
    wait_served_by,
    write_code,
)
from tests.harness.core import SERVER, start

#: Every way new code can fail at import (tests/harness/code.py), with its rollback line.
HANG_READY = 2
BROKEN_AT_IMPORT = broken_at_import(HANG_READY)


@pytest.mark.parametrize("kind", list(BROKEN_AT_IMPORT))
@pytest.mark.timeout(60)
def test_broken_upgrade_rolls_back_and_next_one_works(start_server, app_dir, kind):
    broken, why = BROKEN_AT_IMPORT[kind]
    # a short ready timeout for the hang (it costs each run that long); a real one otherwise,
    # so that a slow start on a busy machine is not taken for the failure under test
    server = start(start_server, app_dir, ready=HANG_READY if kind == "hang" else 20)
    old = http_get(server.port)
    with Load(server.port, fresh=1, keepalive=1, slow=0) as load:
        write_code(app_dir, "v2", broken)
        mark = server.mark()
        os.kill(server.pid, signal.SIGHUP)
        found = server.wait_for(r"upgrade rolled back: generation 2 .*" + why, 15, after=mark)
        if kind != "hang":  # it exited: whatever its status, before it was ready
            assert "before it was ready" in found.string, found.string
        after = http_get(server.port)
        assert (after.pid, after.version) == (old.pid, "v1")
        report = load.stop()
    assert report.failures == [], report.summary()
    write_code(app_dir, "v3")
    new_pid = server.upgrade()
    assert wait_served_by(server.port, new_pid).version == "v3"
    assert server.stop() == 0


@pytest.mark.timeout(60)
def test_first_generation_broken_exits_with_clear_error(start_server, app_dir):
    write_code(app_dir, "v1", "raise RuntimeError('broken from the start')")
    server = start_server([PYTHON, SERVER, "127.0.0.1:0"], cwd=app_dir)
    server.wait_for(r"the app failed to start: generation 1 .* exited \(exit status 1\)", 15)
    assert "RuntimeError: broken from the start" in server.output()
    assert server.proc.wait(10) == 1  # as Python exits on an exception the program raised


@pytest.mark.parametrize("warm", [True, False], ids=["warm", "cold"])
@pytest.mark.timeout(60)
def test_an_upgrade_that_cannot_start_has_its_outcome_at_once(start_server, tmp_path, warm):
    """A deploy moved the working directory away: the new generation cannot be started. That
    is the upgrade's outcome, at once (``reload`` hears it: it waited out its timeout), the old
    code serves on, and the next upgrade reports its own outcome."""
    app = tmp_path / "app"
    app.mkdir()
    write_code(app, "v1")
    server = start(start_server, app, ready=20, extra=() if warm else ("--no-warm",))
    if warm:
        server.wait_warm()
    old = http_get(server.port)
    app.rename(tmp_path / "moved")
    reload = grace_cli("reload", "--pid", str(server.pid), "--timeout", "20", timeout=30)
    assert reload.returncode == 1, reload  # rolled back
    server.wait_for(r"upgrade rolled back: generation 2 could not be started", 1)
    after = http_get(server.port)
    assert (after.pid, after.version) == (old.pid, "v1")
    (tmp_path / "moved").rename(app)
    write_code(app, "v3")
    reload = grace_cli("reload", "--pid", str(server.pid), "--timeout", "20", timeout=30)
    assert reload.returncode == 0, reload
    assert http_get(server.port).version == "v3"  # the old one no longer accepts
    assert "next start attempt" not in server.output()  # a generation served all along
    assert server.stop() == 0
