"""End-to-end tests of the core with a stdlib server (tests/apps/core_server.py): upgrades
under load, signals, restarts and clean-up.

Real supervisor and generation processes, real sockets on 127.0.0.1; every wait is on a line
the server prints or a port answering, bounded in time. Rollback of broken code is in
test_core_rollback.py, what crosses the process boundary in test_core_boundary.py.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time

import pytest

from tests.harness import (
    LINUX_PROC,
    PYTHON,
    Load,
    fd_count,
    gone_or_zombie,
    http_get,
    wait_served_by,
    wait_until,
    write_code,
    zombies,
)
from tests.harness.core import SERVER, start
from tests.harness.inflight import LongRequest


@pytest.mark.timeout(60)
def test_seed_scenario_slow_request_finishes_on_old_generation(start_server, app_dir):
    server = start(start_server, app_dir)
    first = http_get(server.port)
    assert first.status == 200 and first.version == "v1"
    slow = LongRequest(server.port, 3)
    assert slow.held_by(lambda: [first.pid]) == first.pid
    write_code(app_dir, "v2")
    new_pid = server.upgrade()
    fresh = wait_served_by(server.port, new_pid)
    assert fresh.version == "v2"
    answer = slow.finish(10)
    assert answer.status == 200
    assert (answer.pid, answer.version) == (first.pid, "v1")
    server.wait_for(r"generation 1 drained [1-9]\d* connections", 10)
    assert server.stop() == 0


@pytest.mark.timeout(120)
def test_ten_upgrades_under_load_fail_nothing(start_server, app_dir):
    # Warm upgrades a tenth of a second apart outpace 0.5 s drains: without room for every
    # drain, the max_draining limit would cut the oldest short by design (test_never_wait.py)
    server = start(start_server, app_dir, extra=["--max-draining=20"])
    server.wait_warm()
    sup_fds = fd_count(server.pid)
    with Load(server.port, fresh=2, keepalive=2, slow=2, slow_seconds=0.5) as load:
        wait_until(lambda: load.report.requests > 50, 10, "load to start")
        for number in range(2, 12):
            write_code(app_dir, f"v{number}")
            new_pid = server.upgrade()
            wait_until(
                lambda pid=new_pid: pid in load.report.pids, 10, f"traffic on generation {new_pid}"
            )
        report = load.stop()
    assert report.failures == [], report.summary()
    assert "drain cut short" not in server.output()
    # every slow request started was answered (a warm upgrade is too quick for a fixed count)
    assert report.slow_started == report.slow_completed >= 3, report.summary()
    assert wait_served_by(server.port, new_pid).version == "v11"
    assert {"v1", "v6", "v11"} <= report.versions
    if LINUX_PROC:
        wait_until(lambda: len(server.live_generations()) == 1, 15, "old generations to exit")
        wait_until(lambda: fd_count(server.pid) <= sup_fds, 5, f"at most {sup_fds} supervisor fds")
        assert zombies(server.pid) == []
    assert server.stop() == 0


@pytest.mark.timeout(90)
def test_supervisor_fds_and_children_flat_after_twenty_upgrades(start_server, app_dir):
    if not LINUX_PROC:
        pytest.skip("needs /proc")
    server = start(start_server, app_dir)
    server.wait_warm()
    before = fd_count(server.pid)
    for _ in range(20):
        server.upgrade()
        wait_until(lambda: len(server.live_generations()) == 1, 10, "the old generation to exit")
    wait_until(lambda: fd_count(server.pid) <= before, 5, f"at most {before} supervisor fds")
    assert zombies(server.pid) == []
    assert server.stop() == 0


UPGRADE_STARTED = r"upgrade started \(|starting generation \d+ \(pid \d+\) \(queued"
FORKED_IN = r"warm start: pid (\d+) forked from the template in (\d+) ms"


def decided_at(server, mark: int) -> list[float]:
    """When each upgrade was decided, which the pacing counts from: its start line's time less
    the wait for the template's answer (a warm start is said once its pid comes: on a busy
    machine, hundreds of ms later)."""
    times = server.times_of(UPGRADE_STARTED, mark)
    output = server.output(mark)
    waited = {int(pid): int(ms) / 1000 for pid, ms in re.findall(FORKED_IN, output)}
    lines = [line for line in output.splitlines() if re.search(UPGRADE_STARTED, line)]
    pids = [int(re.findall(r"\(pid (\d+)\)", line)[-1]) for line in lines[: len(times)]]
    return [moment - waited.get(pid, 0.0) for moment, pid in zip(times, pids, strict=True)]


@pytest.mark.timeout(90)
@pytest.mark.parametrize(("storm", "interval"), [(0.5, 1.0), (3.2, 1.0)], ids=["shorter", "longer"])
def test_hup_storm_is_coalesced(start_server, app_dir, storm, interval):
    """A storm of HUPs makes at most two upgrades per interval: upgrades start at least one
    interval apart, the last HUP is honoured (one follow-up), and nothing more starts after the
    storm, checked once two intervals have passed with nothing under way."""
    server = start(start_server, app_dir, interval=interval)
    mark = server.mark()
    began = time.monotonic()
    sent = 0
    while time.monotonic() - began < storm and sent < 1000:
        os.kill(server.pid, signal.SIGHUP)
        sent += 1
        time.sleep(0.02)
    last_hup = time.monotonic()
    server.wait_for(r"queued: .* one follow-up upgrade will run", 10, after=mark)
    # the follow-up of the last HUPs starts at most one interval after the last start
    wait_until(
        lambda: server.times_of(UPGRADE_STARTED, mark)[-1:] >= [last_hup - interval],
        15,
        "an upgrade started after the storm's last interval (the follow-up)",
    )
    started = len(server.times_of(UPGRADE_STARTED, mark))
    server.wait_for(rf"generation {started + 1} \(pid \d+\) ready after", 15, after=mark)
    settle = time.monotonic() + 2 * interval  # time for any extra upgrade to show
    wait_until(lambda: time.monotonic() >= settle, 3 * interval, "two intervals to pass")
    starts = decided_at(server, mark)
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    upgrades = len(starts)
    assert upgrades >= 2, f"a storm of {sent} HUPs made {upgrades} upgrade(s)"
    # two per interval at most: the first, then at most one per interval after it
    assert upgrades <= 2 + int(storm / interval), (upgrades, gaps)
    assert all(gap >= interval * 0.8 for gap in gaps), f"upgrades started too close: {gaps}"
    assert max(server.generation_pids()) == upgrades + 1
    assert starts[-1] >= last_hup - interval  # the storm's last HUPs were not lost
    assert http_get(server.port).status == 200
    assert server.stop() == 0


@pytest.mark.timeout(60)
def test_hup_sent_to_generation_upgrades_through_supervisor(start_server, app_dir):
    server = start(start_server, app_dir)
    gen1 = http_get(server.port).pid
    new_pid = server.upgrade(pid=gen1)
    assert new_pid != gen1
    wait_served_by(server.port, new_pid)
    assert server.generation_pids()[2] == new_pid
    assert server.stop() == 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_stop_signal_drains_in_flight_then_exits_zero(start_server, app_dir, tmp_path, stop_signal):
    pidfile = tmp_path / "server.pid"
    server = start(start_server, app_dir, extra=[f"--pidfile={pidfile}"])
    assert int(pidfile.read_text()) == server.pid
    slow = LongRequest(server.port, 3, path="/x")
    assert slow.held_by(lambda: [server.generation_pids()[1]]) == server.generation_pids()[1]
    os.kill(server.pid, stop_signal)
    assert server.proc.wait(20) == 0
    answer = slow.finish(10)
    assert answer.status == 200
    assert answer.headers.get("connection") == "close"
    assert not pidfile.exists()
    with pytest.raises(ConnectionRefusedError):
        http_get(server.port)


@pytest.mark.timeout(60)
def test_crashed_generation_is_restarted(start_server, app_dir):
    server = start(start_server, app_dir)
    gen1 = http_get(server.port).pid
    mark = server.mark()
    os.kill(gen1, signal.SIGKILL)
    server.wait_for(r"generation 1 .* exited unexpectedly \(killed by SIGKILL\)", 10, after=mark)
    server.wait_for(r"generation 2 \(pid \d+\) ready after", 10, after=mark)
    assert http_get(server.port).pid not in (gen1, -1)
    assert server.stop() == 0


@pytest.mark.timeout(60)
def test_unix_socket_kept_during_upgrade_removed_on_stop(start_server, app_dir, tmp_path):
    path = tmp_path / "s.sock"
    server = start_server([PYTHON, SERVER, f"unix:{path}"], cwd=app_dir)
    server.wait_for(r"ready after", 15)
    server.upgrade()
    assert path.exists()
    with socket.socket(socket.AF_UNIX) as client:
        client.settimeout(5)
        client.connect(str(path))
        client.sendall(b"GET /hello HTTP/1.0\r\n\r\n")
        received = b""
        while chunk := client.recv(4096):
            received += chunk
        assert b"version:v1" in received
    assert server.stop() == 0
    assert not path.exists()


@pytest.mark.timeout(90)
def test_idle_keepalive_clients_across_four_upgrades(start_server, app_dir):
    """Clients that keep a connection idle between requests (less than the keep-alive
    timeout) across 4 upgrades see no failure; the connections really are reused."""
    server = start(start_server, app_dir)
    with Load(server.port, fresh=0, keepalive=0, slow=0, idle=3, idle_seconds=1.0) as load:
        for number in range(2, 6):
            done = load.report.requests
            wait_until(lambda d=done: load.report.requests >= d + 3, 15, "a round of requests")
            write_code(app_dir, f"v{number}")
            new_pid = server.upgrade()
            wait_until(lambda p=new_pid: p in load.report.pids, 15, f"idle clients on {new_pid}")
        report = load.stop()
    assert report.failures == [], report.summary()
    assert report.reconnects < report.requests, report.summary()
    assert "v5" in report.versions
    assert server.stop() == 0


@pytest.mark.timeout(30)
def test_cleanup_kills_only_what_the_server_started(start_server, tmp_path):
    """A pid printed in a server's output is not ours on its word alone (a reused pid, as root,
    could be anyone's): clean-up kills the processes recorded as the server's descendants."""
    stranger = subprocess.Popen(
        [PYTHON, "-c", "import time; time.sleep(60)"], start_new_session=True
    )
    try:
        script = (
            "import os, subprocess, sys, time\n"
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'],"
            " start_new_session=True)\n"
            f"print('generation 1 (pid {stranger.pid}) ready; helper pid', child.pid, flush=True)\n"
            "time.sleep(60)\n"
        )
        server = start_server([PYTHON, "-c", script], cwd=tmp_path)
        found = server.wait_for(r"helper pid (\d+)", 10)
        helper = int(found.group(1))
        server.close()
        assert stranger.poll() is None, "clean-up killed a process the server did not start"
        wait_until(lambda: gone_or_zombie(helper), 5, "the server's own helper to be killed")
    finally:
        stranger.kill()
        stranger.wait(5)
