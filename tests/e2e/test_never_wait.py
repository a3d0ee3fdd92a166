"""An upgrade never waits for older generations to drain (issue 13), end to end.

The core test server (tests/apps/core_server.py) runs under load while long requests are in
flight on each generation; upgrades 2 s apart must each reach new code within its start time,
every long request must finish on the generation (and code) that accepted it, and past
``max_draining`` the oldest drain is cut short. A long request is known to be in flight once a
generation holds its connection (``/proc``: the server side of the client's port).
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import threading
import time

import pytest

from tests.e2e.test_core_e2e import write_code
from tests.harness import (
    PYTHON,
    Load,
    child_pids,
    fd_count,
    grace_cli,
    holder_of,
    http_get,
    read_response,
    wait_until,
    zombies,
)

pytestmark = [
    pytest.mark.skipif(not os.path.isdir("/proc/net"), reason="needs /proc"),
    pytest.mark.timeout(120),
]
LAUNCHER = """\
import sys
from grace_plugins.options import Options
from grace_plugins.runner import run_or_exit
from tests.apps.core_server import serve
drain, limit = float(sys.argv[2]), int(sys.argv[3])
options = Options(ready_timeout=10, drain_timeout=drain, upgrade_interval=0.1, max_draining=limit)
run_or_exit(serve, [sys.argv[1]], options)
"""
SAMPLES: dict[str, list[float]] = {"idle": [], "draining": []}


def start(start_server, app_dir, drain=30, limit=3):
    (app_dir / "serve.py").write_text(LAUNCHER)
    argv = [PYTHON, str(app_dir / "serve.py"), "127.0.0.1:0", str(drain), str(limit)]
    server = start_server(argv, cwd=app_dir)
    server.wait_ready()
    return server


class LongRequest:
    """``GET /hello?sleep=N`` on its own connection; knows which generation accepted it."""

    def __init__(self, port: int, seconds: float) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=seconds + 20)
        self.conn.request("GET", f"/hello?sleep={seconds}")  # sent before this returns
        assert self.conn.sock is not None
        self.client_port = self.conn.sock.getsockname()[1]
        self.result: dict[str, object] = {}
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            self.result["response"] = read_response(self.conn)[0]
        except Exception as exc:  # the test asserts on what happened
            self.result["error"] = repr(exc)
        finally:
            self.conn.close()

    def held_by(self, supervisor: int) -> int:
        """Wait until a generation holds the server side of this connection; its pid."""
        found = wait_until(lambda: _holder(supervisor, self.client_port), 5, "the long request")
        return int(found)  # type: ignore[call-overload]

    def finish(self, timeout: float):
        self.thread.join(timeout)
        assert "response" in self.result, self.result
        return self.result["response"]


def _holder(supervisor: int, client_port: int) -> int | None:
    return holder_of(child_pids(supervisor) or [], client_port)


def new_code_after(server, version: str, timeout: float = 10.0) -> tuple[int, float]:
    """HUP, then poll fresh connections until *version* answers: (its pid, seconds taken)."""
    started = time.monotonic()
    os.kill(server.pid, signal.SIGHUP)

    def probe():
        resp = http_get(server.port)
        return resp if resp.version == version else None

    resp = wait_until(probe, timeout, f"{version} to answer")
    return resp.pid, time.monotonic() - started  # type: ignore[attr-defined]


def test_three_upgrades_two_seconds_apart_each_with_a_long_request(start_server, app_dir):
    server = start(start_server, app_dir)
    server.wait_warm()
    sup_fds = fd_count(server.pid)
    version_of: dict[int, str] = {}
    with Load(server.port, fresh=2, keepalive=2, slow=0) as load:
        wait_until(lambda: load.report.requests > 20, 10, "load to start")
        write_code(app_dir, "v2")
        pid, took = new_code_after(server, "v2")  # nothing drains yet
        SAMPLES["idle"].append(took)
        version_of[pid] = "v2"
        wait_until(lambda: len(server.live_generations()) == 1, 15, "generation 1 to drain")
        longs = []
        for number in (3, 4, 5):
            tick = time.monotonic()
            long = LongRequest(server.port, 7)
            holder = long.held_by(server.pid)
            longs.append((long, holder))
            draining = len(server.live_generations()) > 1
            write_code(app_dir, f"v{number}")
            pid, took = new_code_after(server, f"v{number}")
            SAMPLES["draining" if draining else "idle"].append(took)
            assert took < 2.0, f"v{number} took {took:.2f} s (draining: {draining})"
            version_of[pid] = f"v{number}"
            if number < 5:
                # the next trigger 2 s after this one
                time.sleep(max(0.0, tick + 2.0 - time.monotonic()))
        for long, holder in longs:
            resp = long.finish(15)
            assert resp.status == 200 and resp.pid == holder
            assert resp.version == version_of.get(holder, resp.version)
        report = load.stop()
    assert report.failures == [], report.summary()
    assert len(SAMPLES["draining"]) >= 2
    wait_until(lambda: len(server.live_generations()) == 1, 15, "old generations to exit")
    wait_until(lambda: fd_count(server.pid) <= sup_fds, 5, f"at most {sup_fds} supervisor fds")
    assert zombies(server.pid) == []
    assert server.stop() == 0
    print(f"\ntrigger -> new code: {SAMPLES}")


def test_past_the_limit_the_oldest_drain_is_cut_short_and_status_shows_drains(
    start_server, app_dir
):
    server = start(start_server, app_dir, drain=30, limit=1)
    first = LongRequest(server.port, 25)
    gen1 = first.held_by(server.pid)
    write_code(app_dir, "v2")
    gen2, _ = new_code_after(server, "v2")
    shown = grace_cli("status", "--pid", str(server.pid))
    assert re.search(
        rf"draining: generation 1 \(pid {gen1}\), (\d+ connections left, )?(29|30) s to its"
        r" deadline",
        shown.stdout,
    )
    second = LongRequest(server.port, 6)
    assert second.held_by(server.pid) == gen2
    with Load(server.port, fresh=2, keepalive=2, slow=0) as load:
        mark = server.mark()
        write_code(app_dir, "v3")
        cut_at = time.monotonic()
        new_code_after(server, "v3")
        server.wait_for(
            rf"generation 1 \(pid {gen1}\) drain cut short: 2 generations draining, more than"
            r" max_draining=1",
            5,
            after=mark,
        )
        server.wait_for(
            r"generation 1 drained 1 connections in \d+ ms \(0 idle closed, 1 closed when the"
            r" drain was cut short\)",
            5,
            after=mark,
        )
        server.wait_for(rf"generation 1 \(pid {gen1}\) exited after draining", 5, after=mark)
        assert time.monotonic() - cut_at < 3  # closed at the cut, not at its 30 s deadline
        resp = second.finish(15)
        assert (resp.status, resp.pid, resp.version) == (200, gen2, "v2")
        report = load.stop()
    assert report.failures == [], report.summary()
    assert "response" not in first.result  # cut short: it held the oldest drain
    shown = grace_cli("status", "--pid", str(server.pid))
    assert "draining: generation 1 " not in shown.stdout
    assert zombies(server.pid) == []
    assert server.stop() == 0
