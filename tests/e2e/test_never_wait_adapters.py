"""An upgrade never waits for older generations to drain (issue 13), through the adapters.

``flask --app app hotrun`` and ``python manage.py runhot`` (``--noreload``: HUP is the
trigger) run under load (fresh connections, keep-alive and idle keep-alive clients). After a
first upgrade, three upgrades, each triggered once the previous one's predecessor drains and
each with a ~6 s request in flight: every upgrade reaches new code while the generation it
replaces still serves that request (waiting for its drain would take the request's 6 s), and
starts before the older generations draining then have exited (the supervisor's log says in
which order); every long request completes with 200 from the pid that
accepted it (so on the code it started on), nothing fails, no zombie, no fd growth (after the
first upgrade: the steady state); ``grace-plugins status`` shows the connection each draining
generation still holds. A long request is known to be in flight once a generation holds its
connection (``/proc``). Trigger -> new code and start times are printed, not asserted.
"""

from __future__ import annotations

import os
import re
import statistics
from collections.abc import Callable

import pytest

from tests.harness import (
    Load,
    django_site,
    fd_count,
    fd_links,
    flask_site,
    gone_or_zombie,
    grace_cli,
    wait_until,
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
    pytest.mark.timeout(180),
]
LONG_SECONDS = 6.0
#: trigger -> new code, per adapter: with an older generation draining, and with none.
SAMPLES: dict[str, dict[str, list[float]]] = {}
#: each new generation's start time ("ready after N ms"), per adapter
STARTS: dict[str, list[float]] = {}


def _each_held_one(supervisor: int, holders: list[int], seen: dict[int, str], shown: list[str]):
    """Ask ``grace-plugins status``; note in *seen* each holder it shows draining with exactly
    1 connection left. True once every holder was seen so, in this answer or an earlier one:
    each long request ends at its own time, so on a loaded machine the windows in which both
    show their single connection at once can be too short to catch in one answer."""
    answer = grace_cli("status", "--pid", str(supervisor)).stdout
    if answer not in shown:
        shown.append(answer)
    for holder in holders:
        line = rf"draining: generation \d+ \(pid {holder}\), 1 connections left, \d+ s to its"
        if re.search(line, answer):
            seen.setdefault(holder, answer)
    return all(holder in seen for holder in holders)


def three_upgrades_with_long_requests(
    adapter: str, server, set_code: Callable[[str], None], load_options: dict
) -> None:
    """The scenario (see the module doc); samples go to ``SAMPLES[adapter]``."""
    samples = SAMPLES.setdefault(adapter, {"draining": [], "idle": []})
    starts = STARTS.setdefault(adapter, [])
    first = server.generation_pids()[1]
    # a first upgrade with nothing in flight: the supervisor's fds then are its steady state
    # (a warm start's template comes up after the first generation is ready)
    set_code("v2")
    second, took = new_code_after(server, "v2")
    samples["idle"].append(took)
    wait_until(lambda: gone_or_zombie(first), 15, "generation 1 to drain and exit")
    wait_until(lambda: zombies(server.pid) == [], 10, "the supervisor to reap generation 1")
    sup_fds = fd_count(server.pid)
    links_before = fd_links(server.pid)
    version_of = {second: "v2"}
    longs: list[tuple[LongRequest, int]] = []
    drained: list[bool] = []
    with Load(server.port, **load_options) as load:
        wait_until(lambda: load.report.requests > 20, 15, "load to start")
        for number in (3, 4, 5):
            long = LongRequest(server.port, LONG_SECONDS)
            holder = long.held_by(lambda: server.generation_pids().values())
            longs.append((long, holder))
            older = draining_generations(server, holder)
            draining = bool(older)
            drained.append(draining)
            mark = server.mark()
            set_code(f"v{number}")
            pid, took = new_code_after(server, f"v{number}")
            samples["draining" if draining else "idle"].append(took)
            found = server.wait_for(rf"\(pid {pid}\) ready after (\d+) ms", 5)
            start_time = int(found.group(1)) / 1000
            starts.append(start_time)
            # the new code answers while the generation it replaced still serves its long
            # request, and it started before the older ones drained: it waited for no drain
            assert not long.answered, (
                f"v{number} came after the drain: {took:.2f} s, its start {start_time:.2f} s"
            )
            assert_started_while_draining(server, number, older, after=mark)
            version_of[pid] = f"v{number}"
            # the next upgrade comes once this one's predecessor drains beside the others
            server.wait_for(rf"\[gen {number - 1} \d+\] draining", 10, after=mark)
        # the two youngest long requests have seconds to run: status shows each held
        seen: dict[int, str] = {}
        shown: list[str] = []
        holders = [holder for _, holder in longs[1:]]
        try:
            wait_until(lambda: _each_held_one(server.pid, holders, seen, shown), 5, "status")
        except AssertionError as exc:
            missing = [holder for holder in holders if holder not in seen]
            raise AssertionError(
                f"{exc}: never 1 connection left in {missing}; it showed:\n" + "\n".join(shown)
            ) from None
        print("\n" + "\n".join(dict.fromkeys(seen.values())))
        for long, holder in longs:
            resp = long.finish(LONG_SECONDS + 15)
            assert (resp.status, resp.pid) == (200, holder), long.result
            assert resp.version == version_of[holder]
        report = load.stop()
    assert report.failures == [], report.summary()
    assert drained == [False, True, True]  # the 2nd and 3rd upgrades had older ones draining
    newest = max(version_of, key=lambda p: version_of[p])
    wait_until(
        lambda: all(gone_or_zombie(p) for p in version_of if p != newest),
        30,
        "old generations to exit",
    )
    wait_until(lambda: zombies(server.pid) == [], 10, "the supervisor to reap its children")
    wait_until(
        lambda: fd_count(server.pid) <= sup_fds,
        5,
        f"at most {sup_fds} supervisor fds (had {links_before}, then {fd_links(server.pid)})",
    )
    assert server.stop() == 0


def _summary() -> str:
    rows = []
    for adapter, samples in SAMPLES.items():
        for kind, values in samples.items():
            if values:
                rows.append(
                    f"{adapter} {kind}: n={len(values)} min={min(values):.3f}"
                    f" median={statistics.median(values):.3f} max={max(values):.3f} s"
                )
    for adapter, values in STARTS.items():
        rows.append(
            f"{adapter} start times: min={min(values):.3f}"
            f" median={statistics.median(values):.3f} max={max(values):.3f} s"
        )
    return "\n".join(rows)


@pytest.fixture(scope="module", autouse=True)
def print_samples():
    yield
    print("\ntrigger -> new code\n" + _summary())


# -- flask hotrun ---------------------------------------------------------------------------------
def test_flask_hotrun_three_upgrades_while_older_generations_drain(start_server, tmp_path):
    if not os.path.exists(flask_site.FLASK):
        pytest.skip("flask is not installed")
    app = flask_site.seed_app(tmp_path)
    server = start_server(
        [flask_site.FLASK, "--app", "app.py", "hotrun", "-p", "0", "--no-reload"],
        cwd=str(tmp_path),
        env={"PYTHONDONTWRITEBYTECODE": "1"},
    )
    server.wait_ready(30)
    three_upgrades_with_long_requests(
        "flask hotrun",
        server,
        lambda version: flask_site.set_version(app, version),
        {"fresh": 2, "keepalive": 2, "slow": 0, "idle": 2, "idle_seconds": 0.5},
    )


# -- manage.py runhot -----------------------------------------------------------------------------
def test_runhot_three_upgrades_while_older_generations_drain(start_server, tmp_path):
    pytest.importorskip("django")
    site = django_site.copy_site(tmp_path)
    server = django_site.runhot(start_server, site, "--noreload")
    three_upgrades_with_long_requests(
        "manage.py runhot",
        server,
        lambda version: django_site.set_version(site, version),
        {"fresh": 2, "keepalive": 2, "slow": 0, "idle": 2, "idle_seconds": 1.0},
    )
