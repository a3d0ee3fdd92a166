"""Fault injection against the core (real processes): kills at the worst moments, clients that
never finish, slow imports under load, and a soak of many upgrades.

The soak runs ``GRACE_SOAK_UPGRADES`` upgrades (default 100; CI runs a reduced form).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess

import pytest

from tests.harness import (
    LINUX_PROC,
    PYTHON,
    Load,
    ServerProcess,
    child_pids,
    established_connections,
    fd_count,
    gone_or_zombie,
    http_get,
    joined,
    wait_served_by,
    wait_until,
    write_code,
    zombies,
)
from tests.harness.core import SERVER, start
from tests.harness.inflight import LongRequest


@pytest.mark.timeout(60)
def test_new_generation_killed_while_starting_is_rolled_back(start_server, app_dir):
    server = start(start_server, app_dir, ready=20)
    old = http_get(server.port).pid
    write_code(app_dir, "v2", "import time\ntime.sleep(30)")
    mark = server.mark()
    os.kill(server.pid, signal.SIGHUP)
    found = server.wait_for(r"upgrade started \(SIGHUP\): generation 2 \(pid (\d+)\)", 10, mark)
    os.kill(int(found.group(1)), signal.SIGKILL)
    server.wait_for(r"rolled back: generation 2 .*killed by SIGKILL", 10, after=mark)
    assert http_get(server.port).pid == old
    assert server.stop() == 0


@pytest.mark.timeout(60)
def test_old_generation_killed_while_draining_leaves_service_up(start_server, app_dir):
    server = start(start_server, app_dir)
    old = http_get(server.port).pid
    slow = LongRequest(server.port, 5)  # its server is killed on purpose: any outcome
    slow.held_by(lambda: [old])
    new = server.upgrade()
    os.kill(old, signal.SIGKILL)
    server.wait_for(r"generation 1 .* exited after draining \(killed by SIGKILL\)", 10)
    assert wait_served_by(server.port, new).status == 200
    joined(slow.thread, 10, "the slow client")
    assert server.stop() == 0


@pytest.mark.timeout(60)
def test_stuck_request_and_slowloris_are_closed_at_the_drain_deadline(start_server, app_dir):
    server = start(start_server, app_dir, drain=1.5)
    old = http_get(server.port).pid
    stuck = LongRequest(server.port, 30)
    stuck.held_by(lambda: [old])
    loris = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    loris.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\n")  # never finishes its headers
    accepted = lambda: not LINUX_PROC or established_connections(old) >= 2  # noqa: E731
    wait_until(accepted, 10, "the slowloris to be accepted")
    server.upgrade()
    drained = r"generation 1 drained (\d+) connections in (\d+) ms .* (\d+) closed at the \d+ s"
    found = server.wait_for(drained + " deadline", 10)
    assert int(found.group(1)) >= 2 and int(found.group(3)) >= 2
    assert int(found.group(2)) >= 1400  # it waited for its deadline
    assert loris.recv(100) == b""  # an orderly close, not a reset
    loris.close()
    joined(stuck.thread, 10, "the stuck client")
    # closed at the deadline, not answered 30 s later when the request would have ended
    assert "error" in stuck.result and "response" not in stuck.result, stuck.result
    assert server.stop() == 0


@pytest.mark.timeout(90)
def test_one_second_import_under_load_loses_nothing(start_server, app_dir):
    server = start(start_server, app_dir)
    with Load(server.port, fresh=3, keepalive=2, slow=1, slow_seconds=0.5) as load:
        wait_until(lambda: load.report.requests > 50, 10, "load to start")
        for version in ("v2", "v3"):
            write_code(app_dir, version, "import time\ntime.sleep(1)")
            new = server.upgrade()
            wait_until(lambda pid=new: pid in load.report.pids, 10, "the new generation")
        report = load.stop()
    assert report.failures == [], report.summary()
    assert "v3" in report.versions
    assert server.stop() == 0


@pytest.mark.soak
@pytest.mark.timeout(600)
def test_soak_many_upgrades_under_load(start_server, app_dir):
    upgrades = int(os.environ.get("GRACE_SOAK_UPGRADES", "100"))
    # Upgrades every ~50 ms outpace 0.3 s drains: without room for every drain, the
    # max_draining limit would cut the oldest short by design (tests/e2e/test_never_wait.py).
    server = start(start_server, app_dir, interval=0.05, extra=["--max-draining=50"])
    server.wait_warm()
    fds_before = fd_count(server.pid)
    with Load(server.port, fresh=2, keepalive=2, slow=1, slow_seconds=0.3, max_seconds=500) as load:
        wait_until(lambda: load.report.requests > 20, 10, "load to start")
        for _ in range(upgrades):
            server.upgrade()
        report = load.stop()
    assert report.failures == [], report.summary()
    if LINUX_PROC:
        wait_until(lambda: len(server.live_generations()) == 1, 15, "old generations to exit")
        wait_until(lambda: fd_count(server.pid) <= fds_before, 5, f"at most {fds_before} fds")
        assert zombies(server.pid) == []
    assert max(server.generation_pids()) == upgrades + 1
    assert "drain cut short" not in server.output()
    assert server.stop() == 0


@pytest.mark.timeout(60)
def test_crash_with_broken_code_on_disk_backs_off_then_hup_recovers(start_server, app_dir):
    server = start(start_server, app_dir)
    gen1 = http_get(server.port).pid
    write_code(app_dir, "v2", "raise RuntimeError('broken on disk')")
    mark = server.mark()
    os.kill(gen1, signal.SIGKILL)
    server.wait_for(r"restart failed: generation 2 .*exit status 1", 15, after=mark)
    server.wait_for(r"next start attempt in 0\.5 s", 5, after=mark)
    server.wait_for(r"restart failed: generation 3 ", 15, after=mark)
    server.wait_for(r"next start attempt in 1\.0 s", 5, after=mark)  # backing off, not hot
    write_code(app_dir, "v3")
    new = server.upgrade()  # a HUP starts at once instead of waiting for the back-off
    assert wait_served_by(server.port, new).version == "v3"
    assert server.stop() == 0


@pytest.mark.timeout(60)
def test_supervisor_killed_generation_drains_and_exits(start_server, app_dir):
    server = start(start_server, app_dir)
    gen = http_get(server.port).pid
    slow = LongRequest(server.port, 3)
    slow.held_by(lambda: [gen])
    os.kill(server.pid, signal.SIGKILL)
    server.wait_for(r"\[gen 1 \d+\] draining \(the supervisor is gone\)", 10)
    server.wait_for(r"generation 1 drained 1 connections", 10)
    assert slow.finish(10).status == 200  # its request in flight still completed
    wait_until(lambda: gone_or_zombie(gen), 10, "gen exit")


ORPHAN_MAKER = (
    "import os, time\n"
    "if os.fork() == 0:\n"
    "    os.close(1), os.close(2)  # let the parent's caller finish reading at once\n"
    "    time.sleep(0.5)  # outlives its parent: re-parented to PID 1\n"
    "    os._exit(0)\n"
    "os._exit(0)\n"
)


class NamespacedServer(ServerProcess):
    """A server that is PID 1 of its own pid namespace: its generations' pids are namespace
    pids, meaningless outside, so cleanup kills only our process group; the kernel then kills
    everything in the namespace with its PID 1."""

    def generation_pids(self) -> dict[int, int]:
        return {}

    def extra_pids(self) -> list[int]:
        return []


def _can_unshare_pid() -> bool:
    if not shutil.which("unshare") or not LINUX_PROC:
        return False
    probe = subprocess.run(
        ["unshare", "-fp", "--mount-proc", "true"], capture_output=True, timeout=10
    )
    return probe.returncode == 0


@pytest.mark.timeout(60)
def test_supervisor_as_pid1_reaps_orphans(start_server, tmp_path):
    if not _can_unshare_pid():
        if os.environ.get("CI"):  # CI runs as root: this test must run there
            pytest.fail("CI is set but unshare -fp (pid namespaces) is not allowed here")
        pytest.skip("needs unshare -fp (pid namespaces)")
    (tmp_path / "appcode.py").write_text(f"VERSION = 'v1'\nCHILD_PROBE = {ORPHAN_MAKER!r}\n")
    server = start_server(
        # cold starts: the warm-start template would be a second child of PID 1 (its
        # generations' reaping is tested in tests/e2e/test_warm.py)
        ["unshare", "-fp", "--mount-proc", PYTHON, SERVER, "127.0.0.1:0", "--no-warm"],
        cwd=tmp_path,
        cls=NamespacedServer,
    )
    port = server.wait_ready()
    assert "[supervisor 1]" in server.output()
    (supervisor,) = child_pids(server.pid)  # unshare's child: PID 1 inside
    for _ in range(3):
        http_get(port, "/spawn")
        wait_until(lambda: len(child_pids(supervisor)) > 1, 5, "an orphan re-parented to PID 1")
        wait_until(lambda: len(child_pids(supervisor)) == 1, 10, "PID 1 to reap the orphan")
    assert zombies(supervisor) == []


@pytest.mark.timeout(90)
def test_server_that_makes_the_listener_blocking_cannot_hang_a_drain(start_server, app_dir):
    # SSLSocket re-applies a blocking timeout to the listener; the flag is shared by every
    # process, and an old generation that lost an accept() race would sit in accept().
    server = start(start_server, app_dir, env={"GRACE_TEST_BLOCKING_LISTENER": "1"})
    server.wait_for(r"made listener tcp:127\.0\.0\.1:\d+ blocking; made it non-blocking again", 5)
    with Load(server.port, fresh=4, keepalive=0, slow=0) as load:
        wait_until(lambda: load.report.requests > 50, 10, "load to start")
        for number in range(2, 6):
            server.upgrade()
            server.wait_for(rf"generation {number - 1} \(pid \d+\) exited after draining", 10)
        report = load.stop()
    assert report.failures == [], report.summary()
    assert server.stop(timeout=15) == 0
