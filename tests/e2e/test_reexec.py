"""``kill -USR2``: the supervisor re-executes itself in place (same pid, same listeners, the
serving generation adopted and then upgraded), and a broken new program is never exec'd."""

from __future__ import annotations

import os
import signal
import sys

import pytest

from tests.harness import LINUX_PROC, Load, fd_count, grace_cli, http_get, wait_until
from tests.harness.core import start

pytestmark = pytest.mark.timeout(90)


def test_usr2_reexec_under_load_keeps_pid_and_fds(start_server, app_dir):
    server = start(start_server, app_dir)
    server.wait_warm()
    fds = fd_count(server.pid)
    with Load(server.port, fresh=2, keepalive=2, slow=1, slow_seconds=0.5) as load:
        wait_until(lambda: load.report.requests > 30, 10, "load to start")
        for _ in range(2):
            mark = server.mark()
            os.kill(server.pid, signal.SIGUSR2)
            server.wait_for(
                r"supervisor re-executed \(pid unchanged\); adopted generation", 20, mark
            )
            found = server.wait_for(r"generation \d+ \(pid (\d+)\) ready after", 20, mark)
            new = int(found.group(1))
            if sys.platform.startswith("linux"):  # warm: the seed the image before kept
                forked = server.wait_for(r"warm start: pid (\d+) forked from the template", 5, mark)
                assert int(forked.group(1)) == new
            wait_until(lambda pid=new: pid in load.report.pids, 10, f"traffic on {new}")
        report = load.stop()
    assert report.failures == [], report.summary()
    assert server.proc.poll() is None  # the same process, still running

    def status() -> str:
        shown = grace_cli("status", "--pid", str(server.pid))
        return shown.stdout + shown.stderr

    # the state outlives the re-execs: each one upgraded the generation once
    wait_until(lambda: "upgrades finished: 2" in status(), 10, "2 upgrades in the state")
    if LINUX_PROC:
        wait_until(lambda: fd_count(server.pid) <= fds, 10, f"the supervisor back to {fds} fds")
    assert server.stop() == 0


def test_usr2_with_a_broken_program_changes_nothing(start_server, app_dir):
    server = start(start_server, app_dir)
    gen = http_get(server.port).pid
    (app_dir / "break-the-program").write_text("")
    mark = server.mark()
    os.kill(server.pid, signal.SIGUSR2)
    server.wait_for(r"re-exec refused: the new program failed: it exited with status 1", 20, mark)
    assert http_get(server.port).pid == gen
    (app_dir / "break-the-program").unlink()
    new = server.upgrade()  # HUP still works afterwards
    assert new != gen
    assert server.stop() == 0
