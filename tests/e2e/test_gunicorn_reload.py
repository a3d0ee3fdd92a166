"""``gunicorn -k grace_plugins.Worker``: HUPs under load reach new code with no failure, and
broken new code is rolled back without halting the master (the rules behind it:
tests/unit/test_gunicorn_verdicts.py)."""

from __future__ import annotations

import os
import re
import signal

import pytest

from tests.harness import Load, fd_count, grace_cli, http_get, procfs, wait_until, zombies
from tests.harness.gunicorn import (
    BROKEN,
    BROKEN_TIMEOUT,
    NO_TRACEBACK,
    answers,
    assert_clean,
    serving_pids,
    start_gunicorn,
    version,
    write_code,
)

pytest.importorskip("gunicorn")


@pytest.mark.timeout(150)
def test_ten_hups_under_load(start_server, tmp_path):
    server = start_gunicorn(start_server, tmp_path, keepalive=2)
    master = server.pid
    with Load(server.port, fresh=2, keepalive=2, slow=1, slow_seconds=1.0) as load:
        write_code(tmp_path, version("v2"))
        server.hup(2)
        wait_until(lambda: not zombies(master), 10, "no zombies")
        fds = fd_count(master)
        for gen in range(3, 13):
            write_code(tmp_path, version(f"v{gen}"))
            new_pids = server.hup(gen)
            resp = http_get(server.port)
            assert resp.version == f"v{gen}" and resp.pid in new_pids, resp
            assert server.pid == master and server.proc.poll() is None
        report = load.stop()
    assert_clean(report)
    assert report.slow_completed >= 5, report.summary()
    assert {f"v{gen}" for gen in range(3, 13)} <= report.versions, report.versions
    wait_until(lambda: not zombies(master), 10, "no zombies")
    if fds is not None:
        # A transient fd (a worker's pipe while it is spawned) may be counted in either look:
        # a leak grows with every HUP, so the count comes back to at most where it was.
        wait_until(lambda: fd_count(master) <= fds, 10, f"the master back to {fds} fds")
    assert len(re.findall(r"drained \d+ connections", server.output())) >= 20
    assert server.stop() == 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_broken_code_hup_keeps_serving(start_server, tmp_path, kind):
    server = start_gunicorn(start_server, tmp_path, timeout=BROKEN_TIMEOUT)
    with Load(server.port, fresh=2, keepalive=2, slow=1, slow_seconds=1.0) as load:
        server.broken_hup_then_fix(tmp_path, BROKEN[kind], 2)
        report = load.stop()
    assert_clean(report)
    if kind not in NO_TRACEBACK:
        assert len(re.findall(r"Traceback \(most recent call last\)", server.output())) == 1
    assert server.stop() == 0


@pytest.mark.timeout(90)
def test_broken_code_with_a_worker_killed(start_server, tmp_path):
    server = start_gunicorn(start_server, tmp_path, timeout=BROKEN_TIMEOUT)
    write_code(tmp_path, BROKEN["exception"])
    mark = server.mark()
    os.kill(server.pid, signal.SIGHUP)
    server.wait_rollback(2, mark)
    server.wait_until_workers(2, 20)
    victim, survivor = server.workers()
    mark = server.mark()
    os.kill(victim, signal.SIGKILL)
    with Load(server.port, fresh=2, keepalive=2, slow=1, slow_seconds=1.0) as load:
        # back-off: each respawn that meets the broken code waits longer before it exits (1 s,
        # then 2 s), so the master does not fork in a hot loop. Timed by the workers' own start
        # times (each is still waiting when its line shows), not by when the test reads a line.
        backoff = (
            r"\[(\d+)\] .*does not load \({n} failed respawns in a row\);"
            r" this worker exits in {s} s"
        )
        first = procfs.stat(int(server.wait_for(backoff.format(n=1, s=1), 20, after=mark)[1]))
        second = procfs.stat(int(server.wait_for(backoff.format(n=2, s=2), 20, after=mark)[1]))
        assert first is not None and second is not None, "a respawn exited before its wait"
        waited = (second.starttime - first.starttime) / os.sysconf("SC_CLK_TCK")
        assert waited >= 0.9, f"the second respawn started {waited:.2f} s after the first"
        assert server.proc.poll() is None
        assert http_get(server.port).pid == survivor
        write_code(tmp_path, version("v3"))
        new = server.hup(3)
        report = load.stop()
    assert_clean(report)
    assert http_get(server.port).version == "v3"
    assert survivor not in server.workers() and set(server.workers()) == set(new)
    assert server.stop() == 0


@pytest.mark.timeout(60)
def test_partial_failure_rolls_back_the_whole_generation(start_server, tmp_path):
    server = start_gunicorn(start_server, tmp_path)
    old = set(server.workers())
    # the first worker to import this code loads it, the second fails
    write_code(
        tmp_path,
        "import os\n"
        "try:\n"
        "    os.close(os.open('slot', os.O_CREAT | os.O_EXCL | os.O_WRONLY))\n"
        "except FileExistsError:\n"
        "    raise RuntimeError('second worker of this generation') from None\n"
        "VERSION = 'v2'\n",
    )
    with Load(server.port, fresh=2, keepalive=2, slow=1, slow_seconds=1.0) as load:
        mark = server.mark()
        os.kill(server.pid, signal.SIGHUP)
        server.wait_for(r"generation 2 rolled back", 20, after=mark)
        server.wait_for(r"\(generation 2\) drained", 20, after=mark)
        server.wait_until_workers(2, 20)
        assert set(server.workers()) == old
        write_code(tmp_path, version("v3"))
        server.hup(3)
        report = load.stop()
    assert_clean(report)
    assert http_get(server.port).version == "v3"


def test_a_rollback_right_after_a_promotion_does_not_revive_replaced_workers(
    start_server, tmp_path
):
    """Generation N+1 is promoted and a broken N+2 arrives before N's workers looked: N's
    workers must drain anyway (a newer generation took over), not go back to serving when
    N+2 is rolled back. Seen once in CI: a v1 worker answered after v2's promotion."""
    server = start_gunicorn(start_server, tmp_path)
    gen = 1
    for number in range(2, 5):
        replaced = set(server.workers())
        write_code(tmp_path, version(f"v{number}"))
        mark = server.mark()
        os.kill(server.pid, signal.SIGHUP)
        server.wait_promoted(gen + 1, mark)
        write_code(tmp_path, BROKEN["exception"])  # at once
        mark = server.mark()
        os.kill(server.pid, signal.SIGHUP)
        server.wait_rollback(gen + 2, mark)
        wait_until(
            lambda replaced=replaced: not replaced & set(server.workers()),
            20,
            f"the workers replaced by generation {gen + 1} to drain and exit",
        )
        for _ in range(6):
            assert http_get(server.port).version == f"v{number}"
        gen += 2
    assert server.proc.poll() is None


@pytest.mark.timeout(60)
def test_gthread_halts_on_broken_hup_where_ours_survives(start_server, tmp_path):
    """The difference, shown on gunicorn's own gthread worker: the same broken HUP that our
    worker rolls back takes gthread's master down."""
    server = start_gunicorn(start_server, tmp_path, worker="gthread")
    write_code(tmp_path, BROKEN["exception"])
    os.kill(server.pid, signal.SIGHUP)
    status = server.proc.wait(30)
    assert status != 0
    server.wait_for(r"HaltServer|Reason: (App failed to load|Worker failed to boot)", 10)
    assert not answers(server.port)


@pytest.mark.timeout(60)
def test_start_with_broken_code_exits_like_gunicorn(start_server, tmp_path):
    server = start_gunicorn(start_server, tmp_path, code=BROKEN["exception"], ready=False)
    assert server.proc.wait(30) != 0
    server.wait_for(r"HaltServer|Reason: (App failed to load|Worker failed to boot)", 10)


def test_grace_plugins_reload_waits_for_the_verdict(start_server, tmp_path):
    """``grace-plugins reload --pid <master>`` blocks until the new workers are promoted (exit
    0) or rolled back (exit 1, the old code still serving); ``status`` says what happened."""
    server = start_gunicorn(start_server, tmp_path)

    write_code(tmp_path, version("v2"))
    good = grace_cli("reload", "--pid", str(server.pid), "--timeout", "40")
    assert good.returncode == 0, good.stderr
    assert good.stdout.startswith("upgraded: generation 2 ready")
    # reported once the old workers stopped accepting: a smoke test meets the new code
    for _ in range(5):
        answer = http_get(server.port)
        assert "version:v2" in answer.body
    # a new worker, not the master (an old one, draining, may be gone by the time we ask)
    wrong = grace_cli("status", "--pid", str(answer.pid))
    assert wrong.returncode == 2 and f"use --pid {server.pid} " in wrong.stderr, wrong

    write_code(tmp_path, BROKEN["exception"])
    bad = grace_cli("reload", "--pid", str(server.pid), "--timeout", "40")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert bad.stderr.startswith("rolled back: generation 3 rolled back")
    assert "version:v2" in http_get(server.port).body

    shown = grace_cli("status", "--pid", str(server.pid))
    assert shown.returncode == 0
    assert shown.stdout.startswith(f"gunicorn master pid {server.pid}, up")
    assert f"listening: http://127.0.0.1:{server.port}\n" in shown.stdout
    assert "serving: generation 2" in shown.stdout
    assert "upgrades finished: 2" in shown.stdout and "last upgrade: rolled_back" in shown.stdout


@pytest.mark.timeout(90)
def test_status_names_a_respawn_forked_after_a_rolled_back_reload(start_server, tmp_path):
    """Gunicorn keeps the config of a rolled-back reload and forks its respawns with it (they
    carry the rolled-back generation's number): ``status`` still names them as serving."""
    server = start_gunicorn(start_server, tmp_path)
    write_code(tmp_path, BROKEN["exception"])
    bad = grace_cli("reload", "--pid", str(server.pid), "--timeout", "40")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    write_code(tmp_path, version("v1"))  # the respawn imports what is on disk
    wait_until(lambda: len(server.workers()) == 2, 20, "the rolled-back workers gone")
    victim = server.workers()[0]
    os.kill(victim, signal.SIGKILL)
    wait_until(
        lambda: victim not in server.workers() and len(server.workers()) == 2, 20, "a respawn"
    )
    wait_until(lambda: serving_pids(server) == set(server.workers()), 20, "status true")
    assert server.stop() == 0


@pytest.mark.timeout(60)
def test_status_names_no_dead_worker_when_none_is_ready(start_server, tmp_path):
    """The code on disk broke and the only worker was killed, so every respawn fails:
    ``status`` says that no worker is ready, not the dead one's pid."""
    server = start_gunicorn(start_server, tmp_path, workers=1)
    (victim,) = server.workers()
    wait_until(lambda: serving_pids(server) == {victim}, 10, "status names the worker")
    write_code(tmp_path, BROKEN["exception"])
    mark = server.mark()
    os.kill(victim, signal.SIGKILL)
    server.wait_for(r"the code on disk does not load \(1 failed respawns in a row\)", 20, mark)
    status = lambda: grace_cli("status", "--pid", str(server.pid)).stdout  # noqa: E731
    wait_until(lambda: "(no worker ready)" in status(), 10, "status true")
    assert server.stop() == 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGQUIT])
def test_a_quick_stop_during_a_hup_is_not_broken_code(start_server, tmp_path, sig):
    """INT or QUIT (gunicorn's quick stop) while the new workers import: gunicorn's quit
    handler ends the import with ``sys.exit(0)``, which is the stop, not the app's failure."""
    server = start_gunicorn(start_server, tmp_path)
    importing = tmp_path / "importing"
    write_code(tmp_path, f"import time\nopen({str(importing)!r}, 'w').close()\ntime.sleep(8)\n")
    mark = server.mark()
    server.signal(signal.SIGHUP)
    wait_until(importing.exists, 20, "a new worker importing the app")
    server.signal(sig)
    server.proc.wait(30)
    out = server.output(mark)
    assert "does not load" not in out and "AppExited" not in out, out
    assert "rolled back" not in out, out
