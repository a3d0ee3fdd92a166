"""``gunicorn -k grace_plugins.Worker --preload``: each generation's app is imported once, in a
mold (not the master), its workers are forked from it, and every HUP loads new code; gunicorn's
own bookkeeping (respawns, ``max_requests``, TTIN/TTOU, the heartbeat's ``timeout``) keeps
working, broken code is rolled back, and what makes sharing unsafe falls back to each worker
importing for itself (the rules behind it: tests/unit/test_gunicorn_mold_rules.py).

The code under upgrade appends ``PID VERSION`` to ``imports.log`` each time a process imports
it: what tells an import from a fork.
"""

from __future__ import annotations

import gc
import os
import re
import signal

import pytest

from tests.harness import Load, fd_count, grace_cli, http_get, wait_until, zombies
from tests.harness.gunicorn import (
    BROKEN,
    BROKEN_TIMEOUT,
    Gunicorn,
    assert_clean,
    serving_pids,
    start_gunicorn,
    write_code,
)
from tests.harness.procfs import descendants, gone_or_zombie, stat

pytest.importorskip("gunicorn")

IMPORTED_ONCE = r"generation (\d+): the app is imported once, in mold (\d+)"


def counted(v: str, extra: str = "") -> str:
    """``appcode.py`` at version *v*: each import appends ``PID VERSION`` to imports.log."""
    return (
        f"VERSION = {v!r}\nimport os\n"
        "with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'imports.log'),"
        " 'a') as _log:\n"
        "    _log.write(f'{os.getpid()} {VERSION}\\n')\n"
        f"{extra}"
    )


def imports(tmp_path) -> list[tuple[int, str]]:
    """Each import of the code so far: (pid, version)."""
    try:
        text = (tmp_path / "imports.log").read_text()
    except FileNotFoundError:
        return []
    return [(int(pid), v) for pid, v in (line.split() for line in text.splitlines())]


def start(start_server, tmp_path, *extra: str, code: str | None = None, **settings) -> Gunicorn:
    code = code if code is not None else counted("v1")
    return start_gunicorn(start_server, tmp_path, "--preload", *extra, code=code, **settings)


def hup_to(server: Gunicorn, tmp_path, gen: int, code: str | None = None) -> list[int]:
    """Write ``v{gen}`` (or *code*), HUP, wait for generation *gen*; the new workers."""
    write_code(tmp_path, code if code is not None else counted(f"v{gen}"))
    return server.hup(gen)


def mold_of(server: Gunicorn, gen: int, after: int = 0) -> int:
    for found in re.finditer(IMPORTED_ONCE, server.output(after)):
        if int(found.group(1)) == gen:
            return int(found.group(2))
    raise AssertionError(f"no mold for generation {gen}:\n{server.output(after)}")


def spare_of(server: Gunicorn, mold: int, timeout: float = 10.0) -> int:
    """The spare *mold* forked (it takes the mold's place if the mold dies)."""
    line = rf"mold {mold} \(generation \d+\) forked its spare, mold (\d+)"
    return int(server.wait_for(line, timeout).group(1))


def wait_respawned(server: Gunicorn, victim: int) -> None:
    def respawned() -> bool:
        workers = server.workers()
        return victim not in workers and len(workers) == 2

    wait_until(respawned, 20, f"a worker in place of {victim}")


def live_descendants(pid: int) -> list[int]:
    root = stat(pid)
    found = descendants(root) if root is not None else []
    return [one.pid for one in found if not gone_or_zombie(one.pid)]


def assert_children_of_master(server: Gunicorn, pids: list[int]) -> None:
    for pid in pids:
        found = stat(pid)
        assert found is not None and found.ppid == server.pid, (pid, found)


@pytest.mark.timeout(120)
def test_gunicorn_preload_hup_loads_new_code_imported_once_per_generation(start_server, tmp_path):
    server = start(start_server, tmp_path)
    first = imports(tmp_path)
    assert len(first) == 1 and first[0][0] not in (server.pid, *server.workers()), first
    assert first[0][0] == mold_of(server, 1)
    assert_children_of_master(server, server.workers())  # forked twice: the master reaps them
    with Load(server.port, fresh=2, keepalive=2, slow=1, slow_seconds=1.0) as load:
        for gen in (2, 3, 4):
            new = hup_to(server, tmp_path, gen)
            resp = http_get(server.port)
            assert (resp.version, resp.pid in new) == (f"v{gen}", True), resp
            assert_children_of_master(server, new)
        report = load.stop()
    assert_clean(report)
    assert {"v2", "v3", "v4"} <= report.versions, report.versions
    # one import per generation, each in its mold; never in the master nor in a worker
    assert [v for _, v in imports(tmp_path)] == ["v1", "v2", "v3", "v4"]
    assert [pid for pid, _ in imports(tmp_path)] == [mold_of(server, gen) for gen in (1, 2, 3, 4)]
    # the replaced generations' molds are gone, and reaped
    for gen in (1, 2, 3):
        wait_until(lambda g=gen: gone_or_zombie(mold_of(server, g)), 10, f"mold {gen} to exit")
    wait_until(lambda: not zombies(server.pid), 10, "no zombies")
    assert server.stop() == 0


@pytest.mark.timeout(240)
def test_gunicorn_preload_ten_hups_under_load_nothing_grows(start_server, tmp_path):
    """Ten HUPs under load (fresh, busy and idle keep-alive clients, a slow request in flight):
    nothing failed, each HUP served its version, no zombie, the master's fds did not grow."""
    server = start(start_server, tmp_path)
    load = Load(server.port, fresh=2, keepalive=2, idle=2, slow=1, slow_seconds=1.0)
    with load:
        hup_to(server, tmp_path, 2)
        wait_until(lambda: gone_or_zombie(mold_of(server, 1)), 10, "mold 1 to exit")
        spare_of(server, mold_of(server, 2))  # forked at a turn of gunicorn's loop after HUP
        settled = fd_count(server.pid)
        for gen in range(3, 12):
            hup_to(server, tmp_path, gen)
            assert http_get(server.port).version == f"v{gen}"
        report = load.stop()
    assert_clean(report)
    assert {f"v{gen}" for gen in range(2, 12)} <= report.versions, report.versions
    wait_until(lambda: not zombies(server.pid), 10, "no zombies")
    wait_until(lambda: fd_count(server.pid) <= settled, 10, f"the master's fds back to {settled}")
    assert server.stop() == 0


@pytest.mark.timeout(120)
def test_gunicorn_preload_respawns_come_from_the_current_mold(start_server, tmp_path):
    server = start(start_server, tmp_path)
    hup_to(server, tmp_path, 2)
    count = len(imports(tmp_path))
    victim = server.workers()[0]
    os.kill(victim, signal.SIGKILL)
    wait_respawned(server, victim)
    os.kill(server.pid, signal.SIGTTIN)
    server.wait_until_workers(3, 20)
    assert_children_of_master(server, server.workers())
    for _ in range(6):  # every worker serves the current code, none imported it
        assert http_get(server.port).version == "v2"
    os.kill(server.pid, signal.SIGTTOU)
    server.wait_until_workers(2, 20)
    assert len(imports(tmp_path)) == count, imports(tmp_path)
    assert server.stop() == 0


@pytest.mark.timeout(120)
def test_gunicorn_preload_max_requests(start_server, tmp_path):
    server = start(start_server, tmp_path, "--max-requests", "5", "--max-requests-jitter", "0")
    hup_to(server, tmp_path, 2)
    count, mark = len(imports(tmp_path)), server.mark()
    with Load(server.port, fresh=2, keepalive=1) as load:
        wait_until(
            lambda: len(re.findall(r"Booting worker", server.output(mark))) >= 4, 30, "4 restarts"
        )
        report = load.stop()
    assert_clean(report, slow=False)
    assert report.versions == {"v2"}, report.versions
    assert len(imports(tmp_path)) == count, imports(tmp_path)
    wait_until(lambda: serving_pids(server) == set(server.workers()), 10, "status true")
    assert server.stop() == 0


@pytest.mark.timeout(120)
def test_gunicorn_preload_mold_killed(start_server, tmp_path):
    """A mold that dies (``kill -9``, the OOM killer) leaves its spare: respawns still run the
    code the generation serves, never the code on disk (newer, or broken, and never HUPed).
    With both gone, a respawn imports for itself; the next HUP makes a new mold."""
    server = start(start_server, tmp_path)
    mold = mold_of(server, 1)
    spare = spare_of(server, mold)
    os.kill(mold, signal.SIGKILL)
    wait_until(lambda: gone_or_zombie(mold), 10, "the mold to die")
    write_code(tmp_path, BROKEN["syntax error"])  # on disk, never HUPed
    victim, mark = server.workers()[0], server.mark()
    os.kill(victim, signal.SIGKILL)
    server.wait_for(rf"mold {mold} \(generation 1\) is gone; its spare, mold {spare}", 20, mark)
    wait_respawned(server, victim)
    assert [v for _, v in imports(tmp_path)] == ["v1"]  # forked, not imported
    for _ in range(4):  # both workers answer the served code
        assert http_get(server.port).version == "v1"
    assert "does not load" not in server.output(mark), server.output(mark)
    assert_children_of_master(server, server.workers())
    # the spare took the mold's place and forked a spare of its own: kill both
    second = spare_of(server, spare)
    write_code(tmp_path, counted("v1"))
    for pid in (spare, second):
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda p=pid: gone_or_zombie(p), 10, f"mold {pid} to die")
    victim, mark = server.workers()[0], server.mark()
    os.kill(victim, signal.SIGKILL)  # no mold to fork from: the respawn imports for itself
    server.wait_for(rf"mold {spare} \(generation 1\) is gone; the next worker", 20, after=mark)
    wait_respawned(server, victim)
    wait_until(lambda: len(imports(tmp_path)) == 2, 20, "the respawn to import")
    assert [v for _, v in imports(tmp_path)] == ["v1", "v1"]
    with Load(server.port, fresh=2, keepalive=2) as load:
        new = hup_to(server, tmp_path, 2)  # a new mold for the new generation
        report = load.stop()
    assert_clean(report, slow=False)
    assert http_get(server.port).version == "v2"
    assert imports(tmp_path)[-1] == (mold_of(server, 2), "v2")
    assert_children_of_master(server, new)
    assert server.stop() == 0


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    "kind", ["syntax error", "sys.exit(3)", "os._exit(4)", "exception", "hang", "os.abort()"]
)
def test_gunicorn_preload_broken_code_rolled_back(start_server, tmp_path, kind):
    server = start(start_server, tmp_path, timeout=BROKEN_TIMEOUT)
    with Load(server.port, fresh=2, keepalive=2, slow=1, slow_seconds=1.0) as load:
        mark = server.broken_hup_then_fix(tmp_path, BROKEN[kind], 2)
        report = load.stop()
    assert_clean(report)
    out = server.output(mark)
    broken = out[: out.index("generation 2 rolled back")]
    assert "Booting worker" not in broken, broken  # no worker was forked from the broken mold
    assert "the new code does not load" in out or kind in ("hang", "os.abort()"), out
    # the mold leaves by the real os._exit, not the one a load replaces (which would take its
    # own exit for the app's and fail again, 25,000 times, after a hang)
    assert "the app called os._exit(0)" not in out and len(out) < 100_000, out[-3000:]
    assert http_get(server.port).version == "v3"
    assert server.stop() == 0


@pytest.mark.timeout(90)
def test_gunicorn_preload_ready_check_failure_rolled_back(start_server, tmp_path):
    env = {"GRACE_READY_PATH": "/"}
    server = start(start_server, tmp_path, timeout=BROKEN_TIMEOUT, env=env)
    failing = "def status(environ):\n    raise RuntimeError('broken at request time')\n"
    with Load(server.port, fresh=2, keepalive=2) as load:
        server.broken_hup_then_fix(tmp_path, counted("v2", failing), 2)
        report = load.stop()
    assert_clean(report, slow=False)
    assert "broken at request time" in server.output()
    # the copy each mold made before its check has left: 2 workers, a mold, its spare
    wait_until(lambda: len(live_descendants(server.pid)) == 4, 15, "only workers, mold, spare")
    assert server.stop() == 0


#: Code that makes sharing unsafe, and the cause the fallback's line names.
#: ``appcode.status``: each answer says the collector's state in the worker that answered.
COLLECTOR_SEEN = (
    "def status(environ):\n    import gc\n"
    "    return f'299 collector {gc.isenabled()} {\"/\".join(map(str, gc.get_threshold()))}'\n"
)
_, LATER, OLDEST = DEFAULT = gc.get_threshold()
DEFAULT_THRESHOLDS = "/".join(map(str, DEFAULT))


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    "at_import, seen",
    [
        ("", f"True {DEFAULT_THRESHOLDS}"),
        ("import gc\ngc.disable()\n", f"False {DEFAULT_THRESHOLDS}"),
        ("import gc\ngc.set_threshold(5000)\n", f"True 5000/{LATER}/{OLDEST}"),
    ],
    ids=["untouched", "disabled", "own-threshold"],
)
def test_gunicorn_preload_workers_keep_the_collector_the_app_set(
    start_server, tmp_path, at_import, seen
):
    """The mold imports with automatic collection paused; its workers get the collector back
    as the app left it."""
    server = start(start_server, tmp_path)
    new = hup_to(server, tmp_path, 2, counted("v2", at_import + COLLECTOR_SEEN))
    resp = http_get(server.port)
    assert (resp.status, resp.pid in new, f"collector {seen}" in resp.body) == (299, True, True), (
        resp
    )
    assert imports(tmp_path)[-1] == (mold_of(server, 2), "v2")  # forked from the mold
    assert server.stop() == 0


UNSAFE = {
    "thread": (
        "import threading, time\nthreading.Thread(target=time.sleep, args=(600,),"
        " name='started-at-import', daemon=True).start()\n",
        "the import started a thread ('started-at-import')",
    ),
    "socket": (
        "import socket\n_kept = socket.socket()\n_kept.bind(('127.0.0.1', 0))\n",
        "the import opened a socket and kept it open (fd ",
    ),
    # as an SQLAlchemy pool keeps the connection of Flask-SQLAlchemy's create_all() at import
    "database": (
        "import sqlite3\n_db = sqlite3.connect(os.path.join(os.path.dirname("
        "os.path.abspath(__file__)), 'site.sqlite'))\n"
        "_db.execute('create table if not exists hits (n)')\n",
        "the import opened a file for reading and writing and kept it open (fd ",
    ),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", sorted(UNSAFE))
def test_gunicorn_preload_unsafe_import_falls_back(start_server, tmp_path, kind):
    server = start(start_server, tmp_path)
    code, cause = UNSAFE[kind]
    mark = server.mark()
    new = hup_to(server, tmp_path, 2, counted("v2", code))
    out = server.output(mark)
    assert len(re.findall(r"cannot share the app between the workers", out)) == 1, out
    assert cause in out, out
    assert http_get(server.port).version == "v2"
    # each worker imported for itself (and the mold that refused, once)
    v2 = [pid for pid, v in imports(tmp_path) if v == "v2"]
    assert len(v2) == 3 and set(new) <= set(v2), (v2, new)
    hup_to(server, tmp_path, 3)  # code without it: a mold again
    assert imports(tmp_path)[-1] == (mold_of(server, 3), "v3")
    assert server.stop() == 0


#: A socket the import leaves to garbage in a reference cycle, old enough that only a full
#: collection frees it (as a library's client object, dropped, would be).
SOCKET_IN_GARBAGE = (
    "import gc, socket\n"
    "class _Holder:\n"
    "    def __init__(self):\n"
    "        self.sock = socket.socket()\n"
    "        self.me = self\n"
    "_held = _Holder()\n"
    "gc.collect(0)  # it survives a young collection: older now\n"
    "del _held\n"
)


#: What the import may leave open and still share the app: a socket only garbage holds; a
#: log kept open for appending (as a ``logging.FileHandler`` configured at import); an SQLite
#: connection idle in an SQLAlchemy pool (as after Flask-SQLAlchemy's ``create_all()``): the
#: mold disposes of the pool, and each worker opens its own; a ``multiprocessing.Value``, a
#: counter the workers share on purpose.
SAFE = {
    "shared-counter": "import multiprocessing\n_hits = multiprocessing.Value('i', 0)\n",
    "socket-in-garbage": SOCKET_IN_GARBAGE,
    "sqlalchemy-pool": (
        "from sqlalchemy import create_engine, text\n"
        "_engine = create_engine('sqlite:///' + os.path.join(os.path.dirname("
        "os.path.abspath(__file__)), 'site.sqlite'))\n"
        "with _engine.begin() as _db:\n"
        "    _db.execute(text('create table if not exists hits (n integer)'))\n"
    ),
    "log-for-appending": (
        "_app_log = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'app.log'),"
        " 'a')\n"
    ),
}


@pytest.mark.timeout(90)
@pytest.mark.parametrize("kind", sorted(SAFE))
def test_gunicorn_preload_what_is_shared_safely_does_not_stop_sharing(start_server, tmp_path, kind):
    server = start(start_server, tmp_path)
    mark = server.mark()
    new = hup_to(server, tmp_path, 2, counted("v2", SAFE[kind]))
    assert "cannot share the app" not in server.output(mark), server.output(mark)
    assert imports(tmp_path)[-1] == (mold_of(server, 2), "v2")  # imported once, in the mold
    resp = http_get(server.port)
    assert (resp.version, resp.pid in new) == ("v2", True), resp
    assert server.stop() == 0


@pytest.mark.timeout(90)
def test_gunicorn_preload_timeout_kills_a_stuck_worker(start_server, tmp_path):
    server = start(start_server, tmp_path, timeout=3)
    stuck, healthy = server.workers()
    mark = server.mark()
    os.kill(stuck, signal.SIGSTOP)  # no heartbeat from it any more
    try:
        server.wait_for(rf"WORKER TIMEOUT \(pid:{stuck}\)", 30, after=mark)
        wait_until(lambda: stuck not in server.workers(), 20, "the stuck worker to be killed")
    finally:
        if not gone_or_zombie(stuck):
            os.kill(stuck, signal.SIGCONT)
    server.wait_until_workers(2, 20)
    assert healthy in server.workers()  # its heartbeat reaches the master: never timed out
    timed_out = re.findall(r"WORKER TIMEOUT \(pid:(\d+)\)", server.output(mark))
    assert set(timed_out) == {str(stuck)}, server.output(mark)
    assert http_get(server.port).version == "v1"
    assert len(imports(tmp_path)) == 1  # the replacement came from the mold
    assert server.stop() == 0


@pytest.mark.timeout(60)
def test_gunicorn_preload_broken_at_first_start_stops_the_master(start_server, tmp_path):
    code = counted("v1", "raise RuntimeError('broken from the start')\n")
    server = start_gunicorn(start_server, tmp_path, "--preload", code=code, ready=False)
    assert server.proc.wait(30) != 0
    out = server.output()
    assert "App failed to load" in out and "broken from the start" in out, out
    assert "Booting worker" not in out


@pytest.mark.timeout(90)
def test_gunicorn_preload_status_shows_the_mold_and_reload_waits(start_server, tmp_path):
    server = start(start_server, tmp_path, timeout=BROKEN_TIMEOUT)
    master = str(server.pid)

    def mold_line() -> str:
        shown = grace_cli("status", "--pid", master)
        assert shown.returncode == 0, shown.stderr
        return next((ln for ln in shown.stdout.splitlines() if ln.startswith("mold:")), "")

    def workers_listed(line: str) -> set[int]:
        return {int(pid) for pid in re.findall(r"\d+", line.split("forked from it:")[1])}

    def mold_with_its_workers() -> str:
        """The mold line once it lists the live workers (the master's lookout thread writes
        the state file a moment after each fork)."""
        line = mold_line()
        return line if line and workers_listed(line) == set(server.workers()) else ""

    line = wait_until(mold_with_its_workers, 10, "the mold and its workers in the status")
    assert f"generation 1 (pid {mold_of(server, 1)}" in line
    shown = f"generation 1 (pid {mold_of(server, 1)}, spare {spare_of(server, mold_of(server, 1))})"
    wait_until(lambda: shown in mold_line(), 10, "the spare in the status")  # forked once ready
    shown = grace_cli("status", "--pid", master).stdout
    assert shown.startswith(f"gunicorn master pid {master}, up"), shown
    assert f"listening: http://127.0.0.1:{server.port}\n" in shown, shown
    write_code(tmp_path, counted("v2"))
    good = grace_cli("reload", "--pid", master, "--timeout", "40")
    assert good.returncode == 0 and good.stdout.startswith("upgraded: generation 2"), good
    wait_until(lambda: f"generation 2 (pid {mold_of(server, 2)}," in mold_line(), 10, "mold 2")
    write_code(tmp_path, BROKEN["exception"])
    bad = grace_cli("reload", "--pid", master, "--timeout", "40")
    assert bad.returncode == 1 and bad.stderr.startswith("rolled back: generation 3"), bad
    line = wait_until(mold_with_its_workers, 10, "generation 2's mold and workers")
    assert "generation 2" in line
    assert server.stop() == 0
