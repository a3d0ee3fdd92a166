"""End-to-end tests of the core with a stdlib server (tests/apps/core_server.py).

Real supervisor and generation processes, real sockets on 127.0.0.1; every wait is on a line
the server prints or a port answering, bounded in time.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time

import pytest

from tests.harness import (
    PYTHON,
    ROOT,
    Load,
    child_pids,
    fd_count,
    http_get,
    wait_served_by,
    wait_until,
    write_code,
    zombies,
)

SERVER = os.path.join(ROOT, "tests", "apps", "core_server.py")
LINUX = os.path.isdir("/proc/self/fd")


def start(
    start_server,
    app_dir,
    address="127.0.0.1:0",
    ready=10,
    drain=10,
    interval=0.1,
    extra=(),
    env=None,
):
    """Start the core test server; upgrades may follow each other every *interval* s."""
    argv = [PYTHON, SERVER, address, f"--ready={ready}", f"--drain={drain}"]
    argv += [f"--interval={interval}", *extra]
    server = start_server(argv, cwd=app_dir, env=env)
    server.wait_ready()
    return server


@pytest.mark.timeout(60)
def test_seed_scenario_slow_request_finishes_on_old_generation(start_server, app_dir):
    server = start(start_server, app_dir)
    first = http_get(server.port)
    assert first.status == 200 and first.version == "v1"
    slow_result = {}
    slow = threading.Thread(
        target=lambda: slow_result.update(r=http_get(server.port, "/hello?sleep=2"))
    )
    slow.start()
    wait_until(lambda: fd_count(first.pid) and _has_connection(first.pid), 5, "slow request")
    write_code(app_dir, "v2")
    new_pid = server.upgrade()
    fresh = wait_served_by(server.port, new_pid)
    assert fresh.version == "v2"
    slow.join(10)
    assert slow_result["r"].status == 200
    assert (slow_result["r"].pid, slow_result["r"].version) == (first.pid, "v1")
    server.wait_for(r"generation 1 drained [1-9]\d* connections", 10)
    assert server.stop() == 0


def _has_connection(pid: int) -> bool:
    """True once *pid* holds more sockets than when idle (a connection was accepted)."""
    try:
        links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
    except OSError:
        return True  # not Linux: fall back to the request's own timing
    return sum(link.startswith("socket:") for link in links) >= 3


@pytest.mark.timeout(120)
def test_ten_upgrades_under_load_fail_nothing(start_server, app_dir):
    server = start(start_server, app_dir)
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
    assert report.slow_completed >= 10, report.summary()
    assert wait_served_by(server.port, new_pid).version == "v11"
    assert {"v1", "v6", "v11"} <= report.versions
    if LINUX:
        wait_until(lambda: len(child_pids(server.pid)) == 1, 15, "old generations to exit")
        wait_until(lambda: fd_count(server.pid) <= sup_fds, 5, f"at most {sup_fds} supervisor fds")
        assert zombies(server.pid) == []
    assert server.stop() == 0


@pytest.mark.parametrize(
    ("broken", "why"),
    [
        ("def broken(:\n", r"exited \(exit status 4\) before it was ready"),
        ("import module_that_does_not_exist\n", r"exited \(exit status 4\)"),
        ("raise RuntimeError('boom at import')\n", r"exited \(exit status 4\)"),
        ("import sys\nsys.exit(3)\n", r"exited \(exit status 4\)"),
        ("import os\nos.abort()\n", r"exited \(killed by SIGABRT\)"),
        ("import time\ntime.sleep(60)\n", r"was not ready within 2 s"),
    ],
    ids=["syntax", "import", "raise", "sys.exit", "abort", "hang"],
)
@pytest.mark.timeout(60)
def test_broken_upgrade_rolls_back_and_next_one_works(start_server, app_dir, broken, why):
    server = start(start_server, app_dir, ready=2)
    old = http_get(server.port)
    with Load(server.port, fresh=1, keepalive=1, slow=0) as load:
        write_code(app_dir, "v2", broken)
        mark = server.mark()
        os.kill(server.pid, signal.SIGHUP)
        server.wait_for(r"upgrade rolled back: generation 2 .*" + why, 15, after=mark)
        after = http_get(server.port)
        assert (after.pid, after.version) == (old.pid, "v1")
        report = load.stop()
    assert report.failures == [], report.summary()
    write_code(app_dir, "v3")
    new_pid = server.upgrade()
    assert wait_served_by(server.port, new_pid).version == "v3"
    assert server.stop() == 0


@pytest.mark.timeout(90)
def test_supervisor_fds_and_children_flat_after_twenty_upgrades(start_server, app_dir):
    if not LINUX:
        pytest.skip("needs /proc")
    server = start(start_server, app_dir)
    before = fd_count(server.pid)
    for _ in range(20):
        server.upgrade()
        wait_until(lambda: len(child_pids(server.pid)) == 1, 10, "the old generation to exit")
    wait_until(lambda: fd_count(server.pid) <= before, 5, f"at most {before} supervisor fds")
    assert zombies(server.pid) == []
    assert server.stop() == 0


@pytest.mark.timeout(60)
def test_hup_storm_is_coalesced(start_server, app_dir):
    server = start(start_server, app_dir, interval=1.0)  # the default
    mark = server.mark()
    deadline = time.monotonic() + 1.0
    for _ in range(50):
        os.kill(server.pid, signal.SIGHUP)
        time.sleep(max(0.0, min(0.02, deadline - time.monotonic())))
    server.wait_for(r"queued: .* one follow-up upgrade will run", 10, after=mark)
    server.wait_for(r"generation 3 \(pid \d+\) ready after", 15, after=mark)
    server.wait_for(r"generation 2 \(pid \d+\) exited after draining", 15, after=mark)
    assert http_get(server.port).status == 200
    assert max(server.generation_pids()) == 3  # one upgrade plus one follow-up, no more
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


def _fd_links(pid: int) -> list[str]:
    links = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):  # closed meanwhile
            links.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
    return links


@pytest.mark.timeout(60)
def test_generation_inherits_only_listener_and_channel(start_server, app_dir):
    if not LINUX:
        pytest.skip("needs /proc")
    secret = app_dir / "supervisor-only.log"
    server = start(start_server, app_dir, env={"GRACE_TEST_OPEN_FILE": str(secret)})
    sup_links = _fd_links(server.pid)
    assert str(secret) in sup_links  # the supervisor really holds it
    gen = http_get(server.port).pid
    gen_links = _fd_links(gen)
    assert str(secret) not in gen_links
    # a program the app starts (even with close_fds=False) gets no listener and no variable
    probe = json.loads(http_get(server.port, "/spawn").body)
    assert probe["env"] == []
    assert max(probe["fds"]) <= 3, probe  # 0-2 and the probe's own listdir fd
    assert server.stop() == 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_stop_signal_drains_in_flight_then_exits_zero(start_server, app_dir, tmp_path, stop_signal):
    pidfile = tmp_path / "server.pid"
    server = start(start_server, app_dir, extra=[f"--pidfile={pidfile}"])
    assert int(pidfile.read_text()) == server.pid
    result = {}
    slow = threading.Thread(target=lambda: result.update(r=http_get(server.port, "/x?sleep=1")))
    slow.start()
    gen = server.generation_pids()[1]
    wait_until(lambda: _has_connection(gen), 5, "the slow request to arrive")
    os.kill(server.pid, stop_signal)
    assert server.proc.wait(20) == 0
    slow.join(10)
    assert result["r"].status == 200
    assert result["r"].headers.get("connection") == "close"
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


@pytest.mark.timeout(60)
def test_first_generation_broken_exits_with_clear_error(start_server, app_dir):
    write_code(app_dir, "v1", "raise RuntimeError('broken from the start')")
    server = start_server([PYTHON, SERVER, "127.0.0.1:0"], cwd=app_dir)
    server.wait_for(r"the app failed to start: generation 1 .* exited \(exit status 4\)", 15)
    assert "RuntimeError: broken from the start" in server.output()
    assert server.proc.wait(10) == 4


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"GRACE_PLUGINS_HANDOFF": "garbage"}, r"GRACE_PLUGINS_HANDOFF is not valid JSON"),
        ({"LISTEN_FDS": "1", "LISTEN_PID": "1"}, r"LISTEN_PID=1 is not this process"),
        ({"LISTEN_FDS": "two", "LISTEN_PID": "1"}, r"LISTEN_FDS='two' is not a count"),
    ],
)
def test_malformed_inherited_input_is_one_line(app_dir, env, message):
    result = subprocess.run(
        [PYTHON, SERVER, "127.0.0.1:0"],
        cwd=app_dir,
        env={**os.environ, "PYTHONPATH": ROOT, **env},
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and re.search(message, lines[0]), result.stderr
