"""Upgrades through ``python manage.py runhot`` on a copy of ``example_django/``: the seed
scenario, HUPs and file saves (views, templates) under load, ``--nothreading``, a HUP sent to
the generation, idle keep-alive clients across upgrades."""

from __future__ import annotations

import http.client
import re
import signal

import pytest

from tests.harness import Load, fd_count, http_get, wait_served_by, wait_until, zombies
from tests.harness.django_site import (
    ROLLED_BACK,
    first_pid,
    next_ready,
    runhot,
    save,
    set_version,
)

django = pytest.importorskip("django")


# -- the seed scenario ---------------------------------------------------------------------------
@pytest.mark.timeout(120)
def test_seed_scenario(start_server, django_project, tmp_path):
    pidfile = tmp_path / "runhot.pid"
    server = runhot(start_server, django_project, "--noreload", "--pidfile", str(pidfile))
    port, old = server.port, first_pid(server)
    assert int(pidfile.read_text().strip()) == server.pid
    server.wait_for(r"Starting (WSGI )?development server at http://127\.0\.0\.1:", 10)  # 6.1: WSGI
    server.wait_for(rf"Hot upgrade: kill -HUP {server.pid} \(generation 1, pid {old}\)", 10)
    assert "Watching for file changes" not in server.output()  # --noreload
    # Django's pages, template and static files (DEBUG is on).
    assert http_get(port, "/hello").body == f"WORLD! ospid:{old} version:v1\n"
    page = http_get(port, "/")
    assert (
        page.status == 200
        and "template:t1" in page.body
        and "/static/example/style.css" in page.body
    )
    static = http_get(port, "/static/example/style.css")
    assert static.status == 200 and "font-family" in static.body

    # A slow request in flight on the old generation (its keep-alive connection was accepted
    # there), new code on disk, kill -HUP: the old one finishes it, the new one serves.
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/hello")
    first = conn.getresponse()
    assert f"ospid:{old}" in first.read().decode()
    conn.request("GET", "/hello?sleep=2")
    set_version(django_project, "v2")
    new = server.upgrade(60)
    fresh = wait_served_by(port, new)
    assert fresh.version == "v2"
    slow = conn.getresponse()
    body = slow.read().decode()
    conn.close()
    assert slow.status == 200 and body == f"WORLD! ospid:{old} version:v1\n"
    server.wait_for(rf"generation 1 \(pid {old}\) exited after draining", 30)
    assert server.stop() == 0
    assert not pidfile.exists()


# -- zero failures under load --------------------------------------------------------------------
@pytest.mark.timeout(170)
def test_upgrades_under_load_hup_and_file_saves(start_server, django_project):
    # HUPs back to back outpace 1 s drains: room for every drain, or the max_draining limit
    # would cut the oldest short by design (test_never_wait.py)
    server = runhot(
        start_server,
        django_project,
        *("--ready-timeout", "30", "--drain-timeout", "15", "--max-draining", "20"),
    )
    port = server.port
    pids = [first_pid(server)]
    server.wait_warm(60)
    fds = None
    with Load(port, fresh=2, keepalive=2, slow=1, slow_seconds=1.0, max_seconds=150) as load:
        wait_until(lambda: load.report.requests > 20, 20, "the first requests")
        for _ in range(10):
            pids.append(server.upgrade(60))
            if fds is None:
                fds = fd_count(server.pid)
        for version in ("v2", "v3", "v4"):
            mark = server.mark()
            set_version(django_project, version)
            pids.append(next_ready(server, mark))
            wait_served_by(port, pids[-1])
        wait_until(lambda: "v4" in load.report.versions, 20, "the load to reach v4")
        wait_until(lambda: load.report.slow_completed >= 3, 20, "slow requests to complete")
    report = load.stop()
    assert not report.failures, report.summary()
    assert report.slow_completed == report.slow_started, report.summary()
    assert report.requests > 200, report.summary()
    assert {"v1", "v4"} <= report.versions, report.summary()
    assert http_get(port).version == "v4"
    assert len(set(pids)) == 14
    out = server.output()
    # the saves: each one an upgrade, started at once or queued behind the last one
    assert len(re.findall(r"upgrade (?:started )?\(file changed: ", out)) >= 3
    assert ROLLED_BACK not in out
    assert "drain cut short" not in out
    server.wait_for(rf"\(pid {pids[-2]}\) exited after draining", 30)
    if fds is not None:
        assert fd_count(server.pid) <= fds, "the supervisor leaks fds"
    wait_until(lambda: not zombies(server.pid), 5, "no zombie children")
    assert server.stop() == 0


# -- options -------------------------------------------------------------------------------------
@pytest.mark.timeout(90)
def test_nothreading_and_noreload_upgrade_on_hup(start_server, django_project):
    server = runhot(start_server, django_project, "--nothreading", "--noreload")
    port, old = server.port, first_pid(server)
    first = http_get(port)
    assert first.pid == old
    assert first.headers.get("connection") == "close"  # Django: no keep-alive without threads
    with Load(port, fresh=2, keepalive=1, slow=1, slow_seconds=0.5, max_seconds=80) as load:
        wait_until(lambda: load.report.slow_completed >= 1, 20, "a slow request")
        set_version(django_project, "v2")
        new = server.upgrade(60)
        assert wait_served_by(port, new).version == "v2"
        new2 = server.upgrade(60)
        wait_served_by(port, new2)
    report = load.stop()
    assert not report.failures, report.summary()
    assert report.slow_completed == report.slow_started
    assert "upgrade started (requested by" not in server.output()
    assert server.stop() == 0


@pytest.mark.timeout(60)
def test_template_save_upgrades(start_server, django_project):
    server = runhot(start_server, django_project)
    old = first_pid(server)
    assert "template:t1" in http_get(server.port, "/").body
    template = django_project / "example" / "templates" / "example" / "index.html"
    mark = server.mark()
    save(template, template.read_text().replace("template:t1", "template:t2"))
    new = next_ready(server, mark)
    assert new != old
    page = wait_served_by(server.port, new, path="/")
    assert "template:t2" in page.body
    assert server.stop() == 0


def test_hup_to_generation_and_term_stop(start_server, django_project):
    """A HUP sent to the serving generation instead of the supervisor still upgrades."""
    server = runhot(start_server, django_project, "--noreload")
    old = first_pid(server)
    new = server.upgrade(60, sig=signal.SIGHUP, pid=old)
    assert new != old
    wait_served_by(server.port, new)
    assert server.stop() == 0


@pytest.mark.timeout(150)
def test_idle_keepalive_clients_across_four_upgrades(start_server, django_project):
    """The threaded runserver keeps connections alive: clients idle between requests (less
    than the keep-alive timeout) across 4 upgrades see no failure."""
    server = runhot(start_server, django_project, "--noreload")
    port = server.port
    with Load(
        port, fresh=0, keepalive=0, slow=0, idle=3, idle_seconds=1.0, max_seconds=120
    ) as load:
        for number in range(2, 6):
            done = load.report.requests
            wait_until(lambda d=done: load.report.requests >= d + 3, 20, "a round of requests")
            set_version(django_project, f"v{number}")
            new = server.upgrade(60)
            wait_until(lambda p=new: p in load.report.pids, 20, f"idle clients on pid {new}")
        report = load.stop()
    assert not report.failures, report.summary()
    assert report.reconnects < report.requests  # connections really were kept alive
    assert "v5" in report.versions
    assert server.stop() == 0
