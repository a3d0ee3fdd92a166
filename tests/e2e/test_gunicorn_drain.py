"""``gunicorn -k grace_plugins.Worker``: how old workers stop. In-flight requests finish,
SIGTERM drains (and is never mistaken for a reload's), ``max_requests`` restarts drain, and an
upgrade never waits for the drains of the workers it replaced. Kept-alive connections:
test_gunicorn_keepalive.py."""

from __future__ import annotations

import http.client
import os
import re
import signal
import time

import pytest

from tests.harness import Load, http_get, wait_until
from tests.harness.gunicorn import (
    BROKEN,
    InFlight,
    assert_clean,
    serving_pids,
    start_gunicorn,
    version,
    write_code,
)

pytest.importorskip("gunicorn")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("threads", [1, 4])
def test_sigterm_under_load_finishes_in_flight(start_server, tmp_path, threads):
    server = start_gunicorn(start_server, tmp_path, threads=threads)
    slow = [InFlight(server.port, "/hello?sleep=1.5", timeout=20) for _ in range(3)]
    idle = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    idle.request("GET", "/hello")
    idle.getresponse().read()
    for request in slow:  # accepted: the stop must finish them
        request.wait_held(server)
    assert server.stop(30) == 0
    idle.close()
    assert [request.join(10).status for request in slow] == [200, 200, 200]
    assert re.search(r"drained \d+ connections .*SIGTERM", server.output())


@pytest.mark.timeout(90)
def test_sigterm_right_after_a_rollback_stops(start_server, tmp_path):
    """The old workers hold (and then forget) the failed reload's SIGTERM; a SIGTERM to the
    master at once after the rollback is a stop, and must not be mistaken for the reload's:
    the old workers drain at once instead of serving until gunicorn kills them at
    graceful_timeout (the master records its stop before it SIGTERMs them)."""
    server = start_gunicorn(start_server, tmp_path, graceful=120)
    write_code(tmp_path, BROKEN["exception"])
    mark = server.mark()
    os.kill(server.pid, signal.SIGHUP)
    server.wait_for(r"generation 2 rolled back", 20, after=mark)
    assert server.stop(45) == 0  # not gunicorn's kill at graceful_timeout (120 s)
    assert len(re.findall(r"\(generation 1\) drained .*SIGTERM", server.output(mark))) == 2


@pytest.mark.timeout(60)
def test_a_request_cut_at_graceful_timeout_is_counted_once(start_server, tmp_path):
    """A request that outlives the old worker's drain is cut at ``graceful_timeout`` and
    counted once in the drain's log line (it was counted twice)."""
    server = start_gunicorn(start_server, tmp_path, workers=1, graceful=1)
    endless = InFlight(server.port, "/hello?sleep=30")
    holder = endless.wait_held(server)
    write_code(tmp_path, version("v2"))
    server.hup(2)  # promoted, and the old worker drained (cut) and exited
    found = server.wait_for(rf"worker {holder} \(generation 1\) drained (.*)", 10)
    assert "drained 1 connections" in found.group(0), found.group(0)
    assert found.group(0).endswith(", 1 cut at graceful_timeout)"), found.group(0)
    endless.thread.join(10)
    assert endless.response is None and endless.error is not None  # cut, as the line says


@pytest.mark.timeout(60)
def test_max_requests_restarts_drain_without_failures(start_server, tmp_path):
    (tmp_path / "tmp").mkdir()  # where the master makes its record directory
    server = start_gunicorn(
        start_server,
        tmp_path,
        "--max-requests",
        "40",
        "--max-requests-jitter",
        "10",
        env={"TMPDIR": str(tmp_path / "tmp")},
    )
    with Load(server.port, fresh=2, keepalive=2, slow=1, slow_seconds=0.5) as load:
        server.wait_for(r"drained \d+ connections .*max_requests reached", 30)
        wait_until(
            lambda: len(re.findall(r"max_requests reached", server.output())) >= 3,
            30,
            "three max_requests restarts",
        )
        report = load.stop()
    assert_clean(report)
    assert len(report.pids) >= 4, report.pids
    # ``status`` names the workers serving now, not the ones max_requests replaced
    wait_until(lambda: serving_pids(server) == set(server.workers()), 10, "status true")
    # the records of the workers max_requests replaced go (only the 2 first, the members, stay)
    gone = lambda: recorded_pids(tmp_path / "tmp") - set(server.workers())  # noqa: E731
    wait_until(lambda: len(gone()) <= 2, 10, f"old records forgotten: {gone()}")
    assert server.stop() == 0


def recorded_pids(parent) -> set[int]:
    """The pids of the workers that left a record in the master's record directory."""
    (records,) = parent.glob("grace-gunicorn-*")
    return {
        int(name.split(".")[0].split("-")[3])
        for name in os.listdir(records)
        if name.startswith("w-")
    }


@pytest.mark.timeout(120)
def test_hups_while_old_workers_drain_bring_new_code_at_once(start_server, tmp_path):
    """Three HUPs, each with a 10 s request in flight (accepted by a worker before the HUP).
    gunicorn's reload() would wait for the drains, handling no signal; ours does not: each HUP
    reaches new code while the workers replaced by the HUP before it still drain their long
    request, the master handles a signal (TTIN) meanwhile, and each long request completes on
    the code that accepted it."""
    server = start_gunicorn(start_server, tmp_path, graceful=30)
    generation_of = dict.fromkeys(server.workers(), 1)
    long: list[tuple[InFlight, int]] = []  # each long request and the worker that accepted it
    reached: dict[int, float] = {}  # when each HUP's new code first answered
    with Load(server.port, fresh=2, keepalive=2, slow=0) as load:
        for gen in range(2, 5):
            request = InFlight(server.port, "/hello?sleep=10")
            long.append((request, request.wait_held(server)))
            write_code(tmp_path, version(f"v{gen}"))
            mark = server.mark()
            os.kill(server.pid, signal.SIGHUP)
            generation_of.update(dict.fromkeys(server.wait_promoted(gen, mark), gen))
            wait_until(lambda: http_get(server.port).version == f"v{gen}", 10, f"v{gen}")  # noqa: B023
            reached[gen] = time.monotonic()
        mark = server.mark()
        os.kill(server.pid, signal.SIGTTIN)
        server.wait_for(r"Handling signal: ttin", 30, after=mark)
        ttin = server.times_of(r"Handling signal: ttin", mark)[0]
        answers = [(request.join(40), holder) for request, holder in long]
        report = load.stop()
    assert_clean(report, slow=False)
    for resp, holder in answers:
        assert resp.pid == holder and resp.version == f"v{generation_of[holder]}", answers
    finished = [request.finished or 0.0 for request, _ in long]
    # HUP 3 and HUP 4: the workers that HUP 2 (3) replaced still held their long request
    assert reached[3] < finished[0] and reached[4] < finished[1], (reached, finished)
    assert ttin < finished[2], "the master handled TTIN only once the drains ended"
    assert server.proc.poll() is None
