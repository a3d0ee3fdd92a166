"""Unit tests of the core's pieces: fast, in-process, real sockets and fds (no mocks)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time

import pytest

from grace_plugins import handoff, listeners
from grace_plugins.channel import Channel
from grace_plugins.drain import ConnectionTracker
from grace_plugins.errors import GraceError
from grace_plugins.options import Options
from grace_plugins.pidfile import read_pidfile, remove_pidfile, write_pidfile
from grace_plugins.sdnotify import Notifier

pytestmark = pytest.mark.timeout(30)


# -- addresses and binding ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8000", "tcp:127.0.0.1:8000"),
        ("0.0.0.0:80", "tcp:0.0.0.0:80"),
        ("[::1]:8000", "tcp:[::1]:8000"),
        ("tcp:localhost:1", "tcp:localhost:1"),
    ],
)
def test_parse_address(text, expected):
    assert str(listeners.parse_address(text)) == expected


@pytest.mark.parametrize("text", ["host:port", "::1:80", "1:2:3", "70000", "unix:"])
def test_parse_address_rejects_with_one_line(text):
    with pytest.raises(GraceError) as info:
        listeners.parse_address(text)
    assert "\n" not in str(info.value) and text in str(info.value)


def test_bind_ipv4_is_nonblocking_and_not_inheritable():
    sock = listeners.bind(listeners.parse_address("127.0.0.1:0"))
    with sock:
        assert sock.getblocking() is False
        assert sock.get_inheritable() is False
        assert listeners.name_of(sock).startswith("tcp:127.0.0.1:")


def test_bind_ipv6():
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        sock = listeners.bind(listeners.parse_address("[::1]:0"))
    except GraceError as exc:
        pytest.skip(f"IPv6 loopback unavailable: {exc}")
    with sock:
        assert listeners.name_of(sock).startswith("tcp:[::1]:")


def test_bind_to_every_ipv6_address_takes_ipv4_too_where_the_system_does():
    """``-h ::`` as ``flask run`` and ``runserver -6`` serve it: the system's default
    (``net.ipv6.bindv6only``, 0 on Linux and macOS), so IPv4 clients reach it too."""
    try:
        with open("/proc/sys/net/ipv6/bindv6only") as handle:
            v6only = int(handle.read())
        sock = listeners.bind(listeners.parse_address("[::]:0"))
    except (OSError, GraceError) as exc:
        pytest.skip(f"no IPv6 here: {exc}")
    with sock:
        assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == v6only
        if not v6only:
            port = sock.getsockname()[1]
            with socket.create_connection(("127.0.0.1", port), timeout=2):
                pass


def test_port_in_use_says_what_to_do():
    with listeners.bind(listeners.parse_address("127.0.0.1:0")) as first:
        port = first.getsockname()[1]
        with pytest.raises(GraceError, match=f"Port {port} is in use by another program"):
            listeners.bind(listeners.parse_address(f"127.0.0.1:{port}"))


def test_unix_socket_stale_file_replaced_live_one_refused(tmp_path):
    path = str(tmp_path / "app.sock")
    with listeners.bind(listeners.parse_address(f"unix:{path}")) as live:
        assert listeners.name_of(live) == f"unix:{path}"
        with pytest.raises(GraceError, match="in use by another server"):
            listeners.bind(listeners.parse_address(f"unix:{path}"))
    # the closed socket left its file behind: a new bind replaces it
    assert os.path.exists(path)
    with listeners.bind(listeners.parse_address(f"unix:{path}")) as again:
        listeners.unlink_unix(again)
    assert not os.path.exists(path)


# -- adopting inherited fds ----------------------------------------------------------------------
def _adopt_error(fd: int, expected: str | None = None) -> str:
    with pytest.raises(GraceError) as info:
        listeners.adopt(fd, expected, "GRACE_PLUGINS_HANDOFF")
    message = str(info.value)
    assert "\n" not in message and f"fd {fd}" in message
    return message


def test_adopt_rejects_closed_fd():
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    assert "is not open" in _adopt_error(r)


def test_adopt_rejects_regular_file(tmp_path):
    with open(tmp_path / "f", "w") as handle:
        assert "regular file" in _adopt_error(handle.fileno())


def test_adopt_rejects_stdio_and_pipe():
    assert "standard input/output" in _adopt_error(1)
    r, w = os.pipe()
    try:
        assert "a pipe" in _adopt_error(r)
    finally:
        os.close(r)
        os.close(w)


def test_adopt_rejects_udp_and_non_listening_tcp():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        assert "datagram" in _adopt_error(udp.fileno())
    with socket.socket() as tcp:
        tcp.bind(("127.0.0.1", 0))
        assert "not listening" in _adopt_error(tcp.fileno())


def test_adopt_rejects_wrong_address_and_leaves_fd_open():
    with listeners.bind(listeners.parse_address("127.0.0.1:0")) as sock:
        message = _adopt_error(sock.fileno(), "tcp:127.0.0.1:1")
        assert "but tcp:127.0.0.1:1 was expected" in message
        os.fstat(sock.fileno())  # still open: a rejected fd is not ours to close


def test_adopt_takes_the_fd_itself():
    original = socket.socket()
    original.bind(("127.0.0.1", 0))
    original.listen()
    fd = original.detach()
    adopted = listeners.adopt(fd, None, "test")
    with adopted:
        assert adopted.fileno() == fd  # no duplicate to leak
        assert adopted.get_inheritable() is False and adopted.getblocking() is False


# -- the handoff variable -------------------------------------------------------------------------
def _handoff_env(**overrides) -> dict[str, str]:
    value = {
        "v": 1,
        "supervisor": os.getppid(),
        "generation": 2,
        "listeners": [["tcp:127.0.0.1:1", 3]],
        "channel": 4,
    }
    value.update(overrides)
    return {handoff.HANDOFF_VAR: json.dumps(value)}


def test_handoff_round_trip_and_removed_from_environ():
    options = Options(ready_timeout=1.5, drain_timeout=2.5, ready_path="/healthz", warm=False)
    original = handoff.Handoff(os.getppid(), 3, [("tcp:127.0.0.1:5", 7)], 8, options)
    env = {handoff.HANDOFF_VAR: original.encode(), "OTHER": "x"}
    parsed = handoff.take_handoff(env)
    assert parsed == original and parsed.options.ready_path == "/healthz"
    assert env == {"OTHER": "x"}


def test_a_version_1_handoff_is_still_read():
    """A supervisor started before an upgrade of the package wrote version 1: three settings
    at the top level, the others are the defaults."""
    env = _handoff_env(ready_timeout=4, drain_timeout=2.5, keepalive_timeout=1.0)
    parsed = handoff.take_handoff(env)
    assert parsed is not None and parsed.generation == 2
    assert parsed.options == Options(ready_timeout=4.0, drain_timeout=2.5, keepalive_timeout=1.0)


def test_handoff_absent_is_none():
    assert handoff.take_handoff({}) is None


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({handoff.HANDOFF_VAR: "garbage"}, "not valid JSON"),
        ({handoff.HANDOFF_VAR: "[1]"}, "not a JSON object"),
        (_handoff_env(v=99), "format version 99"),
        (_handoff_env(supervisor=1), "pid mismatch"),
        (_handoff_env(supervisor="x"), "invalid supervisor pid"),
        (_handoff_env(listeners=[]), "has no listeners"),
        (_handoff_env(listeners=[["tcp:x", -1]]), "invalid listener fd -1"),
        (_handoff_env(listeners=[["tcp:x", "3"]]), "invalid listener fd '3'"),
        (_handoff_env(listeners=[5]), "malformed listener entry"),
        (_handoff_env(channel=None), "invalid channel fd"),
        (_handoff_env(drain_timeout="soon"), "invalid value for drain_timeout"),
        (_handoff_env(v=2, options={"warm": 1}), "invalid value for warm"),
        (_handoff_env(v=2, options=[]), "has no options object"),
        (_handoff_env(generation=0), "invalid generation number 0"),
    ],
)
def test_handoff_malformed_gives_one_line(env, problem):
    with pytest.raises(GraceError) as info:
        handoff.take_handoff(env)
    assert problem in str(info.value) and "\n" not in str(info.value)
    assert handoff.HANDOFF_VAR not in env


def test_systemd_fds_parsed_and_removed():
    env = {"LISTEN_FDS": "2", "LISTEN_PID": str(os.getpid()), "LISTEN_FDNAMES": "http:admin"}
    assert handoff.take_systemd_fds(env) == [("http", 3), ("admin", 4)]
    assert env == {}


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"LISTEN_FDS": "x", "LISTEN_PID": "1"}, "not a count"),
        ({"LISTEN_FDS": "-1", "LISTEN_PID": "1"}, "not a count"),
        ({"LISTEN_FDS": "1"}, "LISTEN_PID is missing"),
        ({"LISTEN_FDS": "1", "LISTEN_PID": "abc"}, "not a pid"),
        ({"LISTEN_FDS": "1", "LISTEN_PID": "1"}, "pid mismatch"),
        ({"LISTEN_FDS": "2", "LISTEN_PID": "SELF", "LISTEN_FDNAMES": "a"}, "names 1 fds"),
    ],
)
def test_systemd_malformed(env, problem):
    env = {k: (str(os.getpid()) if v == "SELF" else v) for k, v in env.items()}
    with pytest.raises(GraceError, match=problem):
        handoff.take_systemd_fds(env)


# -- channel, tracker, pidfile, notify -------------------------------------------------------------
def test_systemd_fds_checked_as_gunicorn_reads_them():
    """For a server that adopts them itself: what it would fail on deep inside is one line;
    sockets meant for another process (or no LISTEN_PID) it ignores, and so does the check."""
    handoff.check_systemd_fds({})
    handoff.check_systemd_fds({"LISTEN_FDS": "1", "LISTEN_PID": "1"})
    handoff.check_systemd_fds({"LISTEN_FDS": "1"})
    with pytest.raises(GraceError, match="LISTEN_FDS='x' is not a count"):
        handoff.check_systemd_fds({"LISTEN_FDS": "x", "LISTEN_PID": "1"})
    with pytest.raises(GraceError, match="LISTEN_PID='abc' is not a pid"):
        handoff.check_systemd_fds({"LISTEN_FDS": "1", "LISTEN_PID": "abc"})


def test_a_channel_is_a_connected_unix_stream_socket():
    ours, theirs = socket.socketpair()
    with ours, theirs, socket.socket() as listening, socket.socket(socket.AF_UNIX) as alone:
        listeners.check_channel(ours.fileno(), "V")  # as the supervisor passes it
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        with pytest.raises(GraceError, match="V: channel fd .* is a listening socket"):
            listeners.check_channel(listening.fileno(), "V")
        with pytest.raises(GraceError, match="connected to nothing"):
            listeners.check_channel(alone.fileno(), "V")
        assert listening.fileno() >= 0 and alone.fileno() >= 0  # left open, as found


def test_channel_lines_and_eof():
    ours, theirs_sock = Channel.pair()
    ours.sock.settimeout(5)  # a lost message fails the test instead of hanging it
    theirs = Channel(theirs_sock)
    assert theirs.send("ready") and theirs.send("upgrade")
    received: list[str] = []
    deadline = time.monotonic() + 5
    while len(received) < 2 and time.monotonic() < deadline:
        received += ours.receive() or []
    assert received == ["ready", "upgrade"]
    theirs.close()
    assert ours.receive() is None
    ours.close()


def test_tracker_waits_for_active_and_closes_long_idle():
    tracker = ConnectionTracker(keepalive_timeout=0.2)
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    with a, b, c, d:
        tracker.accepted("busy", a)
        tracker.request_started("busy")
        tracker.accepted("idle", c)
        tracker.request_finished("idle")
        assert tracker.counts() == (1, 1)

        seen_draining: list[bool] = []

        def finish_busy() -> None:
            time.sleep(0.4)
            # responses said Connection: close meanwhile (checked by the test, not here)
            seen_draining.append(tracker.draining)
            tracker.request_finished("busy")
            tracker.closed("busy")

        def close_idle() -> None:
            d.settimeout(5)  # the drain shuts the idle socket: its handler sees EOF
            with contextlib.suppress(OSError):
                d.recv(1)
            tracker.closed("idle")

        worker = threading.Thread(target=finish_busy)
        closer = threading.Thread(target=close_idle)
        worker.start()
        closer.start()
        report = tracker.drain(timeout=5)
        worker.join(5)
        closer.join(5)
        assert not worker.is_alive() and not closer.is_alive()
        assert seen_draining == [True]
        assert report.connections == 2
        assert report.idle_closed == 1 and report.closed_at_deadline == 0
        assert 300 < report.elapsed_ms < 4000


def test_tracker_closes_leftovers_at_deadline():
    tracker = ConnectionTracker(keepalive_timeout=60)
    a, b = socket.socketpair()
    with a, b:
        tracker.accepted("stuck", a)
        tracker.request_started("stuck")
        report = tracker.drain(timeout=0.3)
        assert report.closed_at_deadline == 1
        assert b.recv(1) == b""  # the client sees an orderly close


def test_pidfile_atomic_and_refuses_symlink(tmp_path):
    path = tmp_path / "app.pid"
    write_pidfile(str(path), 1234)
    assert read_pidfile(str(path)) == 1234
    assert os.listdir(tmp_path) == ["app.pid"]  # no temporary file left
    remove_pidfile(str(path), 999)  # someone else's pid: kept
    assert path.exists()
    remove_pidfile(str(path), 1234)
    assert not path.exists()
    target = tmp_path / "target"
    target.write_text("precious")
    link = tmp_path / "link.pid"
    link.symlink_to(target)
    with pytest.raises(GraceError, match="symbolic link"):
        write_pidfile(str(link), 1)
    assert target.read_text() == "precious"


def test_notify_sends_datagrams(tmp_path):
    address = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(address)
        notifier = Notifier(address)
        assert notifier.ready("serving")
        assert "READY=1" in server.recv(4096).decode()
        assert notifier.reloading("upgrading")
        fields = server.recv(4096).decode().split("\n")
        assert "RELOADING=1" in fields
        assert any(f.startswith("MONOTONIC_USEC=") and int(f.split("=")[1]) > 0 for f in fields)
        assert notifier.stopping()
        assert "STOPPING=1" in server.recv(4096).decode()
    assert Notifier("").send("READY=1") is False
