"""``--preload`` molds and gunicorn's bookkeeping at its edges: a worker replaced after a
rolled-back HUP, respawns after a generation without a mold (its workers each imported, or
``preload_app`` turned off in the config), a master that stops while a mold holds the
listening sockets, a stop sent to the whole group while a mold imports, a worker whose mold
died while forking it, and ``max_requests`` once the mold and its spare are gone."""

from __future__ import annotations

import os
import signal
import socket

import pytest

from tests.e2e.test_gunicorn_preload import (
    UNSAFE,
    counted,
    hup_to,
    imports,
    mold_of,
    spare_of,
    start,
    wait_respawned,
)
from tests.harness import http_get, wait_until
from tests.harness.code import write_module
from tests.harness.gunicorn import BROKEN, BROKEN_TIMEOUT, InFlight, start_gunicorn, write_code
from tests.harness.procfs import child_pids, gone_or_zombie

pytest.importorskip("gunicorn")
pytestmark = pytest.mark.timeout(120)


def versions_served(port: int, count: int = 8) -> set[str]:
    return {http_get(port).version for _ in range(count)}


def a_killed_worker_is_replaced(server, serving: str) -> None:
    """SIGKILL a worker: another takes its place, and every answer is version *serving*."""
    victim = server.workers()[0]
    os.kill(victim, signal.SIGKILL)
    wait_respawned(server, victim)
    assert versions_served(server.port) == {serving}


def test_after_a_rolled_back_hup_a_worker_that_exits_is_replaced(start_server, tmp_path):
    """The rolled-back reload forked no worker, and used up its ages: the next spawn is a
    respawn, from the serving generation's mold (it was skipped as a member of the failed
    generation, again and again, until the next HUP)."""
    server = start(start_server, tmp_path)
    mark = server.mark()
    write_code(tmp_path, counted("v2", "raise RuntimeError('broken on purpose')\n"))
    server.signal(signal.SIGHUP)
    server.wait_rollback(2, mark)
    a_killed_worker_is_replaced(server, serving="v1")
    assert server.stop() == 0


def test_a_generation_whose_workers_each_import_retires_the_previous_mold(start_server, tmp_path):
    """Generation 2 cannot share the app (a thread at import): each of its workers imports it.
    Once it serves, generation 1's mold is retired, and a respawn imports the new code, never
    the old mold's."""
    server = start(start_server, tmp_path)
    old_mold = mold_of(server, 1)
    hup_to(server, tmp_path, 2, counted("v2", UNSAFE["thread"][0]))
    wait_until(lambda: gone_or_zombie(old_mold), 10, "generation 1's mold to be retired")
    a_killed_worker_is_replaced(server, serving="v2")
    assert server.stop() == 0


def test_preload_turned_off_in_the_config_retires_the_mold(start_server, tmp_path):
    conf = tmp_path / "gunicorn.conf.py"
    write_module(conf, "preload_app = True\n")
    server = start_gunicorn(start_server, tmp_path, "-c", str(conf), code=counted("v1"))
    mold = mold_of(server, 1)
    write_module(conf, "preload_app = False\n")  # gunicorn reads its config again on HUP
    hup_to(server, tmp_path, 2)
    wait_until(lambda: gone_or_zombie(mold), 10, "the mold to be retired")
    assert versions_served(server.port) == {"v2"}
    assert server.stop() == 0


def test_a_stopping_master_refuses_new_connections_while_its_workers_drain(start_server, tmp_path):
    """The mold holds the listening sockets too: left alone it would keep them listening
    until the master exits, and new connections would wait in the backlog, unanswered."""
    server = start(start_server, tmp_path)
    mold = mold_of(server, 1)
    slow = InFlight(server.port, "/?sleep=4")
    slow.wait_held(server)
    server.signal(signal.SIGTERM)

    def refused() -> bool:
        try:
            socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
        except ConnectionRefusedError:
            return True
        except ConnectionResetError:  # it was in the backlog as the last listener closed:
            return False  # the next one is refused
        return False

    wait_until(refused, 3, "new connections to be refused")
    assert slow.finished is None, "refused while the slow request was still in flight"
    assert gone_or_zombie(mold)
    assert slow.join().status == 200
    assert server.stop() == 0


#: Code whose import (in the mold) holds the mold's forks while ``SLOWFORK`` exists: the
#: process between the mold and a new worker, once it forked the worker, waits (up to 20 s)
#: until the mold is gone (a library's at-fork hook that takes its time), so the mold dies while
#: it waits for the worker's pid.
SLOW_FORKS = (
    "import time\n"
    "_MOLD = os.getpid()\n"
    "_SLOW = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'SLOWFORK')\n"
    "def _slow_middle():\n"
    "    if os.getpid() != _MOLD and os.path.exists(_SLOW):\n"
    "        deadline = time.monotonic() + 20\n"
    "        while os.getppid() == _MOLD and time.monotonic() < deadline:\n"
    "            time.sleep(0.01)\n"
    "os.register_at_fork(after_in_parent=_slow_middle)\n"
)


def test_a_worker_forked_as_its_mold_died_does_not_serve_on(start_server, tmp_path):
    """The mold dies between forking a worker and telling the master its pid: the master gives
    up on that worker (it is not in gunicorn's books: no heartbeat kill, no SIGTERM on HUP),
    so the worker, re-parented to the master, leaves by itself instead of serving old code for
    good."""
    server = start(start_server, tmp_path, code=counted("v1", SLOW_FORKS))
    mold = mold_of(server, 1)
    spare = spare_of(server, mold)  # forked before the slow forks begin
    (tmp_path / "SLOWFORK").touch()
    mark = server.mark()
    os.kill(server.workers()[0], signal.SIGKILL)  # the respawn comes from the mold

    def forked_worker() -> int | None:
        for middle in child_pids(mold) or []:
            for worker in child_pids(middle) or []:
                return worker
        return None

    orphan = wait_until(forked_worker, 10, "the mold's new worker")
    os.kill(mold, signal.SIGKILL)  # while the middle process waits, before the pid reaches it
    server.wait_for(rf"mold {mold} \(generation 1\) did not fork a worker", 20, after=mark)
    wait_until(lambda: gone_or_zombie(orphan), 20, f"the orphan worker {orphan} to leave")
    # (had the test been too slow to kill the mold within the worker's 2 s wait to be
    # re-parented, it would have left because its parent was not the master)
    said = rf"worker {orphan} .*(never took this worker in|the master is gone)"
    server.wait_for(said, 10, after=mark)  # its line may reach us after it is gone
    assert server.count(said, after=mark) == 1, server.output(mark)
    # its spare takes its place: the respawn is forked, not imported
    server.wait_for(rf"mold {mold} \(generation 1\) is gone; its spare, mold {spare}", 10, mark)
    (tmp_path / "SLOWFORK").unlink()
    server.wait_until_workers(2, 20)
    assert [v for _, v in imports(tmp_path)] == ["v1"]
    hup_to(server, tmp_path, 2)
    assert versions_served(server.port) == {"v2"}
    assert server.stop() == 0


def test_a_stop_sent_to_the_whole_group_while_the_mold_imports_is_a_clean_stop(
    start_server, tmp_path
):
    """As a service manager stops a unit (SIGTERM to every process): the mold, importing,
    leaves at once, before the master has read its own signal. That is the stop, not a
    failed import: no rollback, and at the first start no "App failed to load" (status 4)."""
    slow_import = "import time\ntime.sleep(5)\n"  # after the import is logged
    server = start(start_server, tmp_path, code=counted("v1", slow_import), ready=False)
    wait_until(lambda: imports(tmp_path), 20, "the mold to start importing")
    os.killpg(server.pid, signal.SIGTERM)
    assert server.proc.wait(30) == 0, server.output()
    assert "App failed to load" not in server.output()
    assert "rolled back" not in server.output()


def test_a_stop_signal_while_the_workers_are_forked_is_a_clean_stop(start_server, tmp_path):
    """The master told to stop while it forks the first workers: its molds leave at once, the
    forks still asked fail because of the stop, not the code (no rollback, no "App failed to
    load"), and no worker imports the app during the stop."""
    conf = tmp_path / "gunicorn.conf.py"
    marker = tmp_path / "stopped"
    write_module(
        conf,
        "import os, signal\n"
        "def pre_fork(server, worker):\n"
        f"    if not os.path.exists({str(marker)!r}):\n"
        f"        open({str(marker)!r}, 'w').close()\n"
        "        os.kill(server.pid, signal.SIGTERM)\n",
    )
    server = start(start_server, tmp_path, "-c", str(conf), workers=4, ready=False)
    assert server.proc.wait(30) == 0, server.output()
    assert "[ERROR]" not in server.output(), "a clean stop"
    assert [v for _, v in imports(tmp_path)] == ["v1"], "imported once, in the mold"


def test_a_umask_that_leaves_no_permission_bits_is_not_a_mark(start_server, tmp_path):
    """gunicorn creates each heartbeat file under ``--umask``: 0o777 leaves it mode 0, which
    must not read as the master's mark on a worker it gave up on."""
    server = start(start_server, tmp_path, "--umask", "0o777")
    for _ in range(5):
        assert http_get(server.port).version == "v1"
    server.wait_until_workers(2, 10)
    assert server.count("Booting worker") == 2, server.output()
    assert "never took this worker in" not in server.output()
    assert server.stop() == 0


def test_a_stop_during_a_hup_does_not_wait_for_the_new_workers(start_server, tmp_path):
    """The master told to stop while a HUP's mold imports: that mold leaves, no worker is
    forked, and gunicorn's reload, which waits (deaf to signals) until no worker is older than
    the reload, does not wait out graceful_timeout for workers that will never come."""
    server = start(start_server, tmp_path, graceful=30)
    write_code(tmp_path, counted("v2", "import time\ntime.sleep(8)\n"))
    server.signal(signal.SIGHUP)
    wait_until(lambda: len(imports(tmp_path)) == 2, 20, "the new mold to start importing")
    server.signal(signal.SIGTERM)
    assert server.proc.wait(10) == 0, server.output()  # not after graceful_timeout (30 s)
    assert "rolled back" not in server.output()


def test_the_child_exit_hook_hears_of_every_mold_that_exits(start_server, tmp_path):
    """A mold imported the app: what a library keeps per process (prometheus_client's
    multiprocess files, cleaned in ``child_exit`` as its docs say) must be cleaned after it
    too, whether it was retired, failed, or made to leave by the stop, and before ``on_exit``
    (a library's last word at the master's exit), as for gunicorn's own workers."""
    exits = tmp_path / "exits.log"
    (tmp_path / "gunicorn.conf.py").write_text(
        "def child_exit(server, worker):\n"
        f"    with open({str(exits)!r}, 'a') as log:\n"
        "        print(type(worker).__name__, worker.pid, file=log)\n"
        "def on_exit(server):\n"
        f"    with open({str(exits)!r}, 'a') as log:\n"
        "        print('on_exit', server.pid, file=log)\n"
    )
    server = start(start_server, tmp_path, "-c", str(tmp_path / "gunicorn.conf.py"))

    def told() -> list[int]:
        lines = exits.read_text().splitlines() if exits.exists() else []
        return [int(pid) for kind, pid in (line.split() for line in lines) if kind == "ExitedMold"]

    first = {mold_of(server, 1), spare_of(server, mold_of(server, 1))}  # and its spare
    hup_to(server, tmp_path, 2)
    wait_until(lambda: set(told()) == first, 10, "generation 1's retired mold told")
    mark = server.mark()
    write_code(tmp_path, counted("v3", "raise RuntimeError('broken on purpose')\n"))
    server.signal(signal.SIGHUP)
    server.wait_rollback(3, mark)
    failed = [pid for pid, version in imports(tmp_path) if version == "v3"]
    assert len(failed) == 1 and sorted(told()) == sorted([*first, failed[0]])
    second = {mold_of(server, 2), spare_of(server, mold_of(server, 2))}
    assert server.stop() == 0
    assert sorted(told()) == sorted([*first, failed[0], *second])
    assert exits.read_text().splitlines()[-1] == f"on_exit {server.pid}"


def test_a_stuck_retired_mold_is_not_left_behind_holding_the_listeners(start_server, tmp_path):
    """A retired mold or spare that does not leave (stopped by SIGSTOP: its SIGTERM waits) is
    still the master's at the stop: killed and reaped, not left holding the listening socket
    (new connections would wait in its backlog with no one to answer)."""
    server = start(start_server, tmp_path)
    mold = mold_of(server, 1)
    spare = spare_of(server, mold)
    os.kill(spare, signal.SIGSTOP)
    mark = server.mark()
    hup_to(server, tmp_path, 2)
    server.wait_for(rf"mold {mold} and its spare {spare} \(generation 1\) retired", 10, mark)
    assert not gone_or_zombie(spare)  # stopped, its SIGTERM pending
    assert server.stop() == 0
    assert gone_or_zombie(spare), f"spare {spare} was left behind"


@pytest.mark.timeout(60)
def test_max_requests_with_the_mold_and_its_spare_gone_keeps_a_worker_serving(
    start_server, tmp_path
):
    """Once the serving mold and its spare are gone, replacements import the code on disk:
    broken there (no HUP), it costs the first worker that reached ``max_requests``, and the
    other serves on instead of following it (then nothing would serve)."""
    server = start(
        start_server, tmp_path, "--max-requests", "3", threads=None, timeout=BROKEN_TIMEOUT
    )
    mold = mold_of(server, 1)
    spare = spare_of(server, mold)
    for pid in (mold, spare):
        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: gone_or_zombie(mold) and gone_or_zombie(spare), 10, "mold and spare gone")
    write_code(tmp_path, BROKEN["exception"])
    mark = server.mark()
    answered = [http_get(server.port, timeout=5) for _ in range(12)]
    assert {resp.version for resp in answered} == {"v1"}, answered
    server.wait_for(
        r"reached max_requests and serves on .*: (worker \d+ is|the code on disk)", 5, mark
    )
    assert server.stop() == 0
