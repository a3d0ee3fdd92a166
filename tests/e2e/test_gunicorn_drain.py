"""``gunicorn -k grace_plugins.Worker``: how old workers stop. In-flight requests finish,
SIGTERM drains (and is never mistaken for a reload's), ``max_requests`` restarts drain, and an
upgrade never waits for the drains of the workers it replaced. Kept-alive connections:
test_gunicorn_keepalive.py."""

from __future__ import annotations

import http.client
import os
import re
import signal
import threading
import time

import pytest

from tests.harness import Load, http_get, read_response, wait_until
from tests.harness.gunicorn import (
    BROKEN,
    BROKEN_TIMEOUT,
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


@pytest.mark.timeout(90)
@pytest.mark.parametrize("preload", [False, True], ids=["imports", "preload"])
def test_max_requests_after_a_rolled_back_hup_keeps_something_serving(
    start_server, tmp_path, preload
):
    """After a rollback the code on disk is broken. Without ``--preload`` a worker that
    reaches ``max_requests`` serves on (its replacement would import the broken code, and
    once every worker was replaced nothing would serve) until a HUP brings code that loads;
    then the new workers are replaced at ``max_requests`` as usual. With ``--preload`` the
    replacements come from the serving generation's mold: they are replaced (one at a time)."""
    extra = ["--max-requests", "3", *(["--preload"] if preload else [])]
    server = start_gunicorn(start_server, tmp_path, *extra, threads=None, timeout=BROKEN_TIMEOUT)
    old = set(server.workers())
    write_code(tmp_path, BROKEN["exception"])
    mark = server.mark()
    os.kill(server.pid, signal.SIGHUP)
    server.wait_rollback(2, mark)
    answered = [http_get(server.port, timeout=5) for _ in range(12)]  # each worker's 3, twice
    assert {resp.version for resp in answered} == {"v1"}, answered
    held = r"reached max_requests and serves on .*: generation 2 was rolled back"
    if preload:
        assert not re.search(held, server.output()), server.output()
        wait_until(  # from the mold, with the old code
            lambda: (
                answered.append(http_get(server.port, timeout=5)) or answered[-1].pid not in old
            ),
            20,
            "a worker replaced at max_requests to answer",
        )
        assert {resp.version for resp in answered} == {"v1"}, answered
    else:
        server.wait_for(held, 5, after=mark)
        assert {resp.pid for resp in answered} == old and set(server.workers()) == old
    write_code(tmp_path, version("v3"))
    new = set(server.hup(3))
    answered: list = []
    wait_until(
        lambda: answered.append(http_get(server.port, timeout=5)) or answered[-1].pid not in new,
        20,
        "generation 3's first replacement at max_requests to answer",
    )
    assert {resp.version for resp in answered} == {"v3"}, answered
    assert server.stop() == 0


@pytest.mark.timeout(90)
def test_max_requests_once_the_code_on_disk_broke_keeps_the_last_worker_serving(
    start_server, tmp_path
):
    """The code on disk broke without a HUP, and a respawn loads it (a worker was killed):
    the worker left serves on past ``max_requests`` while the respawn loads (nobody knows yet
    whether the code loads) and once it failed (its replacement would fail too, and then
    nothing would serve); it is replaced as usual once the code on disk loads again."""
    server = start_gunicorn(
        start_server, tmp_path, "--max-requests", "3", threads=None, timeout=BROKEN_TIMEOUT
    )
    victim, survivor = server.workers()
    importing = tmp_path / "importing"
    write_code(
        tmp_path,
        f"import pathlib, time\npathlib.Path({str(importing)!r}).touch()\ntime.sleep(2)\n"
        "raise RuntimeError('broken on purpose')\n",
    )
    mark = server.mark()
    os.kill(victim, signal.SIGKILL)
    wait_until(importing.exists, 20, "the respawn to import the code on disk")
    answered = [http_get(server.port, timeout=5) for _ in range(4)]  # while it loads
    server.wait_for(r"serves on .*: worker \d+ is still loading it", 5, mark)
    server.wait_for(r"the code on disk does not load \(1 failed respawns in a row\)", 20, mark)
    answered += [http_get(server.port, timeout=5) for _ in range(4)]  # once it failed
    assert {(resp.version, resp.pid) for resp in answered} == {("v1", survivor)}, answered
    server.wait_for(r"serves on .*: the code on disk does not load", 5, mark)
    write_code(tmp_path, version("v2"))  # fixed on disk: the next respawn loads it
    wait_until(
        lambda: (
            http_get(server.port, timeout=5).pid != survivor and survivor not in server.workers()
        ),
        30,
        f"worker {survivor} replaced at max_requests once a respawn loaded the code",
    )
    assert http_get(server.port, timeout=5).version == "v2"
    assert server.stop() == 0


@pytest.mark.timeout(90)
def test_max_requests_replaces_one_worker_at_a_time(start_server, tmp_path):
    """Two workers that reach ``max_requests`` close together are not replaced both: the
    second serves on until the first one's replacement is ready. So when the code on disk
    broke, it costs one worker, not both (then nothing would serve). The first one's last
    request is slow, so its replacement is not even forked when the second reaches its limit."""
    server = start_gunicorn(
        start_server, tmp_path, "--max-requests", "8", threads=2, timeout=BROKEN_TIMEOUT
    )
    served: dict[int, int] = {}
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    while True:  # the first worker's first 7 requests, on one kept-alive connection
        conn.request("GET", "/hello")
        resp, closing = read_response(conn)
        served[resp.pid] = served.get(resp.pid, 0) + 1
        assert not closing and served[resp.pid] <= 7, resp
        if served[resp.pid] == 7:
            break
    first = resp.pid
    write_code(tmp_path, BROKEN["exception"])
    mark = server.mark()
    slow: list = []
    slow_thread = threading.Thread(
        target=lambda: (conn.request("GET", "/hello?sleep=3"), slow.append(read_response(conn)))
    )
    slow_thread.start()  # its 8th: it will be replaced, once this request is answered
    server.wait_for(rf"\[{first}\] .*Autorestarting worker", 5, mark)
    held = rf"\] .*serves on .*: worker {first} is being replaced first"
    for _ in range(30):  # until the second reaches its limit too
        resp = http_get(server.port, timeout=5)
        assert resp.version == "v1", resp
        if server.count(held, mark):
            break
    second = int(server.wait_for(r"worker (\d+) \(generation 1\) reached max_requests", 5, mark)[1])
    assert second != first
    slow_thread.join(10)
    assert [(resp.pid, resp.version, closing) for resp, closing in slow] == [(first, "v1", True)]
    conn.close()
    server.wait_for(r"the code on disk does not load \(1 failed respawns in a row\)", 20, mark)
    answered = [http_get(server.port, timeout=5) for _ in range(12)]
    assert {(resp.pid, resp.version) for resp in answered} == {(second, "v1")}, answered
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
