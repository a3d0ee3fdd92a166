"""USR2's preflight runs the new program in the background: the supervisor serves signals,
upgrades and drains while it runs (issue 20: a TERM sent during a slow preflight was lost)."""

from __future__ import annotations

import os
import signal

import pytest

from tests.e2e.test_core_e2e import start
from tests.harness import gone_or_zombie, http_get, wait_served_by

pytestmark = pytest.mark.timeout(90)
SLOW = r"core_server: a slow start \(pid (\d+)\)"


def test_a_term_during_a_slow_preflight_stops_the_server_at_once(start_server, app_dir):
    server = start(start_server, app_dir)
    (app_dir / "slow-the-program").write_text("30")
    mark = server.mark()
    os.kill(server.pid, signal.SIGUSR2)
    preflight = int(server.wait_for(SLOW, 20, mark).group(1))
    server.signal(signal.SIGTERM)
    assert server.proc.wait(5) == 0  # the stop was not held by the preflight's 30 s
    assert "re-executing in place" not in server.output(mark)
    assert gone_or_zombie(preflight)  # killed and reaped with the stop


def test_a_hup_during_a_slow_preflight_upgrades_then_the_reexec_follows(start_server, app_dir):
    server = start(start_server, app_dir)
    (app_dir / "slow-the-program").write_text("3")
    mark = server.mark()
    os.kill(server.pid, signal.SIGUSR2)
    server.wait_for(SLOW, 20, mark)
    pid = server.upgrade(30)  # served while the preflight still runs: before any re-exec
    assert "re-exec" not in server.output(mark).replace("re-exec (SIGUSR2): checking", "")
    wait_served_by(server.port, pid)
    (app_dir / "slow-the-program").unlink()  # the exec'd program starts at once
    server.wait_for(r"supervisor re-executed \(pid unchanged\); adopted generation", 30, mark)
    assert http_get(server.port).status == 200
    assert server.stop() == 0
