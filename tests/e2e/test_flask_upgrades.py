"""Upgrades through ``flask --app app.py hotrun`` (a copy of the seed app): the seed scenario,
HUPs and file saves under load, idle clients across upgrades."""

from __future__ import annotations

import http.client
import os
import threading

import pytest

from tests.harness import READY_LINE, Load, fd_count, http_get, wait_served_by, wait_until
from tests.harness.flask_site import (
    FLASK,
    NOT_THE_REPO,
    assert_clean,
    hotrun,
    seed_app,
    set_version,
    stable_supervisor,
    wait_exited,
)

pytestmark = pytest.mark.skipif(not os.path.exists(FLASK), reason="flask is not installed")


# -- the seed scenario --------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_seed_scenario(start_server, tmp_path):
    app = seed_app(tmp_path)
    pidfile = tmp_path / "hotrun.pid"
    server, port = hotrun(start_server, tmp_path, "--pidfile", str(pidfile))
    server.wait_for(rf"kill -HUP {server.pid}", 10)  # the banner says whom to signal
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
