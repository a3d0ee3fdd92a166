"""An upgrade never waits for older generations to drain (issue 13), end to end.

The core test server (tests/apps/core_server.py) runs under load while long requests are in
flight on each generation; each upgrade, triggered while the older generations drain, must
reach new code while the long request of the generation it replaces is still in flight
(waiting for that drain would take the request's whole 7 s) and start before the older
generations draining then have exited (the supervisor's log says in which order), every long
request must finish on
the generation (and code) that accepted it, and past ``max_draining`` the oldest drain is cut
short. A long request is known to be in flight once a generation holds its connection
(``/proc``: the server side of the client's port). Trigger -> new code is printed, not
asserted: bench/ measures it.
"""

from __future__ import annotations

import os
import re

import pytest

from tests.harness import (
    PYTHON,
    Load,
    child_pids,
    fd_count,
    grace_cli,
    wait_until,
    write_code,
    zombies,
)
from tests.harness.inflight import LongRequest
from tests.harness.upgrades import (
    assert_started_while_draining,
    draining_generations,
    new_code_after,
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


def long_request(server, seconds: float) -> tuple[LongRequest, int]:
    """A long request sent now, and the pid of the generation that accepted it."""
    long = LongRequest(server.port, seconds)
    return long, long.held_by(lambda: child_pids(server.pid) or [])


def test_three_upgrades_while_older_generations_drain_long_requests(start_server, app_dir):
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
        # the answer from v2 may come before its log line is read: wait for that pid itself
        wait_until(lambda: server.live_generations() == [pid], 15, "generation 1 to drain")
        longs = []
        for number in (3, 4, 5):
            long, holder = long_request(server, 7)
            longs.append((long, holder))
            draining = draining_generations(server, holder)
            mark = server.mark()
            write_code(app_dir, f"v{number}")
            pid, took = new_code_after(server, f"v{number}")
            SAMPLES["draining" if draining else "idle"].append(took)
            # the new code answers while the generation it replaced still serves its long
            # request, and it started before the older ones drained: it waited for no drain
            assert not long.answered, f"v{number} came after the drain ({took:.2f} s)"
            assert_started_while_draining(server, number, draining, after=mark)
            version_of[pid] = f"v{number}"
            # the next upgrade comes once this one's predecessor drains beside the others
            server.wait_for(rf"\[gen {number - 1} \d+\] draining", 10, after=mark)
        for long, holder in longs:
            resp = long.finish(15)
            assert resp.status == 200 and resp.pid == holder
            assert resp.version == version_of.get(holder, resp.version)
        report = load.stop()
    assert report.failures == [], report.summary()
    assert len(SAMPLES["draining"]) >= 2
    newest = pid
    wait_until(lambda: server.live_generations() == [newest], 15, "old generations to exit")
    wait_until(lambda: fd_count(server.pid) <= sup_fds, 5, f"at most {sup_fds} supervisor fds")
    assert zombies(server.pid) == []
    assert server.stop() == 0
    print(f"\ntrigger -> new code: {SAMPLES}")


def test_past_the_limit_the_oldest_drain_is_cut_short_and_status_shows_drains(
    start_server, app_dir
):
    server = start(start_server, app_dir, drain=30, limit=1)
    first, gen1 = long_request(server, 25)
    write_code(app_dir, "v2")
    gen2, _ = new_code_after(server, "v2")
    shown = grace_cli("status", "--pid", str(server.pid))
    assert re.search(
        rf"draining: generation 1 \(pid {gen1}\), (\d+ connections left, )?(29|30) s to its"
        r" deadline",
        shown.stdout,
    )
    second, holder = long_request(server, 6)
    assert holder == gen2
    with Load(server.port, fresh=2, keepalive=2, slow=0) as load:
        mark = server.mark()
        write_code(app_dir, "v3")
        new_code_after(server, "v3")
        server.wait_for(
            rf"generation 1 \(pid {gen1}\) drain cut short: 2 generations draining, more than"
            r" max_draining=1",
            5,
            after=mark,
        )
        # its long request closed at the cut (the new code's probes may have met generation 1
        # too, before it stopped accepting: answered, they count among the drained)
        server.wait_for(
            r"generation 1 drained [1-9]\d* connections in \d+ ms \(0 idle closed, 1 closed when"
            r" the drain was cut short\)",
            5,
            after=mark,
        )
        # closed at the cut (the line above says so), long before its 30 s deadline: its
        # long request (25 s) got no answer
        server.wait_for(rf"generation 1 \(pid {gen1}\) exited after draining", 5, after=mark)
        assert first.answered and "response" not in first.result, first.result
        resp = second.finish(15)
        assert (resp.status, resp.pid, resp.version) == (200, gen2, "v2")
        report = load.stop()
    assert report.failures == [], report.summary()
    assert "response" not in first.result  # cut short: it held the oldest drain
    shown = grace_cli("status", "--pid", str(server.pid))
    assert "draining: generation 1 " not in shown.stdout
    assert zombies(server.pid) == []
    assert server.stop() == 0
