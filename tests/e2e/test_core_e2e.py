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
import sys
import threading
import time

import pytest

from tests.harness import (
    PYTHON,
    ROOT,
    Load,
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
    joined(slow, 10, "the slow client")
    assert slow_result["r"].status == 200
    assert (slow_result["r"].pid, slow_result["r"].version) == (first.pid, "v1")
    server.wait_for(r"generation 1 drained [1-9]\d* connections", 10)
    assert server.stop() == 0


def _has_connection(pid: int) -> bool:
    """True once *pid* holds a request in flight: an ESTABLISHED connection (a connection of
    an earlier request, closed by its client but not yet by the server, does not count)."""
    if not LINUX:
        return True  # fall back to the request's own timing
    return established_connections(pid) >= 1


@pytest.mark.timeout(120)
def test_ten_upgrades_under_load_fail_nothing(start_server, app_dir):
    server = start(start_server, app_dir)
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
    # every slow request started was answered (a warm upgrade is too quick for a fixed count)
    assert report.slow_started == report.slow_completed >= 3, report.summary()
    assert wait_served_by(server.port, new_pid).version == "v11"
    assert {"v1", "v6", "v11"} <= report.versions
    if LINUX:
        wait_until(lambda: len(server.live_generations()) == 1, 15, "old generations to exit")
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
    server.wait_warm()
    before = fd_count(server.pid)
    for _ in range(20):
        server.upgrade()
        wait_until(lambda: len(server.live_generations()) == 1, 10, "the old generation to exit")
    wait_until(lambda: fd_count(server.pid) <= before, 5, f"at most {before} supervisor fds")
    assert zombies(server.pid) == []
    assert server.stop() == 0


UPGRADE_STARTED = r"upgrade started \(|starting generation \d+ \(pid \d+\) \(queued"


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
    starts = server.times_of(UPGRADE_STARTED, mark)
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
    joined(slow, 10, "the slow client")
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


# -- moved from the unit tests: they start a process ---------------------------------------
def test_import_pulls_in_no_web_framework():
    code = (
        "import sys, grace_plugins, grace_plugins.runner, grace_plugins.tracked_server;"
        "bad = [m for m in ('flask', 'werkzeug', 'django', 'gunicorn') if m in sys.modules];"
        "assert not bad, bad"
    )
    subprocess.run([PYTHON, "-c", code], check=True, timeout=20)


# -- re-running the program ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("argv_tail", "expected_tail"),
    [
        (["-X", "utf8", "prog.py", "--flag"], ["-X", "utf8", "{dir}/prog.py", "--flag"]),
        (["-m", "progpkg", "a"], ["-m", "progpkg", "a"]),
        (["-c", "import progpkg.__main__", "b"], ["-c", "import progpkg.__main__", "b"]),
    ],
    ids=["script", "module", "command"],
)
def test_program_argv_reproduces_how_python_was_started(tmp_path, argv_tail, expected_tail):
    report = "import json, grace_plugins.process as p; print(json.dumps(p.program_argv()))"
    (tmp_path / "prog.py").write_text(report)
    (tmp_path / "progpkg").mkdir()
    (tmp_path / "progpkg" / "__init__.py").write_text("")
    (tmp_path / "progpkg" / "__main__.py").write_text(report)
    result = subprocess.run(
        [sys.executable, *argv_tail],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=20,
        env={
            **os.environ,
            "PYTHONPATH": ROOT,
        },
    )
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert got[0] == sys.executable
    assert got[1:] == [part.format(dir=tmp_path) for part in expected_tail]


def test_non_posix_platform_is_a_clear_error():
    # A child pretends to be Windows (os.name is the platform seam): one line, exit status 2.
    code = (
        "import os; from grace_plugins.runner import run_or_exit; os.name = 'nt';"
        " run_or_exit(lambda c: None, ['8000'])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=20,
        env={
            **os.environ,
            "PYTHONPATH": ROOT,
        },
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "needs POSIX signals and file descriptor passing (Linux or macOS)" in result.stderr


# -- malformed inherited inputs, through the program as a user starts it -------------------------
#: Execs ``argv[3:]`` after putting an fd of kind ``argv[2]`` at fd 3 (or making sure fd 3 is
#: closed) and setting the variables of ``argv[1]`` (JSON; "SELF" becomes the exec'd pid).
INHERIT_LAUNCHER = """
import json, os, socket, sys, tempfile
env, kind = json.loads(sys.argv[1]), sys.argv[2]
keep = []
if kind == "file":
    keep.append(tempfile.TemporaryFile())
    fd = keep[-1].fileno()
elif kind == "pipe":
    fd = os.pipe()[0]
elif kind in ("udp", "tcp", "listening"):
    sock = socket.socket(type=socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    if kind == "listening":
        sock.listen()
    fd = sock.detach()
if kind == "closed":
    try:
        os.close(3)
    except OSError:
        pass
elif kind != "none":
    if fd != 3:
        os.dup2(fd, 3)
    os.set_inheritable(3, True)
for name, value in env.items():
    os.environ[name] = value.replace("SELF", str(os.getpid()))
os.execv(sys.argv[3], sys.argv[3:])
"""


def _handoff(**fields: object) -> str:
    """A handoff variable as this test's child would receive it, with *fields* changed."""
    value: dict[str, object] = {
        "v": 1,
        "supervisor": os.getpid(),  # the launcher execs the server: its parent is us
        "generation": 2,
        "listeners": [["tcp:127.0.0.1:1", 3]],
        "channel": 4,
    }
    value.update(fields)
    return json.dumps(value)


H = "GRACE_PLUGINS_HANDOFF"
MALFORMED_INPUTS = {
    "handoff-not-json": ({H: "garbage"}, "none", r"GRACE_PLUGINS_HANDOFF is not valid JSON"),
    "handoff-not-object": ({H: "[1]"}, "none", r"not a JSON object"),
    "handoff-version": ({H: _handoff(v=99)}, "none", r"format version 99"),
    "handoff-other-supervisor": ({H: _handoff(supervisor=1)}, "none", r"pid mismatch"),
    "handoff-bad-pid": ({H: _handoff(supervisor="x")}, "none", r"invalid supervisor pid"),
    "handoff-no-listeners": ({H: _handoff(listeners=[])}, "none", r"has no listeners"),
    "handoff-negative-fd": (
        {H: _handoff(listeners=[["tcp:x", -1]])},
        "none",
        r"invalid listener fd -1",
    ),
    "handoff-entry": ({H: _handoff(listeners=[5])}, "none", r"malformed listener entry"),
    "handoff-channel": ({H: _handoff(channel=None)}, "none", r"invalid channel fd"),
    "handoff-timeout": ({H: _handoff(drain_timeout="soon")}, "none", r"invalid value"),
    "listen-fds-not-count": ({"LISTEN_FDS": "x", "LISTEN_PID": "SELF"}, "none", r"not a count"),
    "listen-pid-missing": ({"LISTEN_FDS": "1"}, "none", r"LISTEN_PID is missing"),
    "listen-pid-not-pid": ({"LISTEN_FDS": "1", "LISTEN_PID": "abc"}, "none", r"not a pid"),
    "listen-pid-other": ({"LISTEN_FDS": "1", "LISTEN_PID": "1"}, "none", r"is not this process"),
    "listen-names-count": (
        {"LISTEN_FDS": "2", "LISTEN_PID": "SELF", "LISTEN_FDNAMES": "a"},
        "none",
        r"names 1 fds",
    ),
    "fd-closed": ({"LISTEN_FDS": "1", "LISTEN_PID": "SELF"}, "closed", r"fd 3 is not open"),
    "fd-file": ({"LISTEN_FDS": "1", "LISTEN_PID": "SELF"}, "file", r"fd 3 .*regular file"),
    "fd-pipe": ({"LISTEN_FDS": "1", "LISTEN_PID": "SELF"}, "pipe", r"fd 3 .*a pipe"),
    "fd-udp": ({"LISTEN_FDS": "1", "LISTEN_PID": "SELF"}, "udp", r"fd 3 .*datagram"),
    "fd-not-listening": ({"LISTEN_FDS": "1", "LISTEN_PID": "SELF"}, "tcp", r"fd 3 .*not listening"),
}


def run_with_inherited(argv: list[str], env: dict[str, str], kind: str, cwd) -> tuple[int, str]:
    """Start *argv* with these inherited variables and fd 3; return (exit status, stderr)."""
    base = {k: v for k, v in os.environ.items() if k not in (H, "LISTEN_FDS", "LISTEN_PID")}
    result = subprocess.run(
        [PYTHON, "-c", INHERIT_LAUNCHER, json.dumps(env), kind, *argv],
        cwd=cwd,
        env={**base, "PYTHONPATH": ROOT},
        capture_output=True,
        text=True,
        timeout=30,
    )
    return result.returncode, result.stderr


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", list(MALFORMED_INPUTS))
def test_malformed_inherited_input_through_the_server(app_dir, case):
    """Each malformed input a user can meet (a stale variable in a shell, a unit file wrong):
    one line naming it and what to do, exit status 2, no traceback, nothing served."""
    env, kind, message = MALFORMED_INPUTS[case]
    status, stderr = run_with_inherited([PYTHON, SERVER, "127.0.0.1:0"], env, kind, app_dir)
    lines = stderr.strip().splitlines()
    assert status == 2, stderr
    assert len(lines) == 1 and re.search(message, lines[0]), stderr
    assert "Traceback" not in stderr


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
