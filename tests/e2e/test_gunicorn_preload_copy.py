"""``--preload`` with a ready check: the copy a mold makes before its check, which takes the
mold's place when the check leaves a thread (as an APM agent's first traced request does), and
never outlives the mold otherwise (grace_plugins/gunicorn/mold_copy.py)."""

from __future__ import annotations

import os
import re
import signal

import pytest

from tests.e2e.test_gunicorn_preload import (
    UNSAFE,
    assert_children_of_master,
    counted,
    hup_to,
    imports,
    start,
)
from tests.harness import grace_cli, http_get, wait_until, zombies
from tests.harness.gunicorn import BROKEN_TIMEOUT, Gunicorn, write_code
from tests.harness.procfs import child_pids, gone_or_zombie

pytest.importorskip("gunicorn")

CHECKED = {"GRACE_READY_PATH": "/"}


#: A view that starts a thread at its first request (as an APM agent's first event does).
THREAD_AT_FIRST_REQUEST = (
    "def status(environ):\n"
    "    import threading, time\n"
    "    if not any(t.name == 'started-by-a-request' for t in threading.enumerate()):\n"
    "        threading.Thread(target=time.sleep, args=(600,), name='started-by-a-request',"
    " daemon=True).start()\n"
    "    return '200 OK'\n"
)


#: The line of a generation whose ready check left what makes forking unsafe.
COPIED = (
    r"generation (\d+): (.*); its workers are forked from mold (\d+), a copy of mold (\d+)"
    r" made before the check"
)


@pytest.mark.timeout(90)
def test_gunicorn_preload_a_thread_the_ready_check_started_is_left_behind(start_server, tmp_path):
    """The ready check's request runs in the mold: what it leaves (a thread, as an APM
    agent's first event starts) makes that process unsafe to fork. The workers are forked from
    the copy the mold made before the check: they share the import, nobody imports again."""
    server = start(start_server, tmp_path, env=CHECKED)
    mark = server.mark()
    new = hup_to(server, tmp_path, 2, counted("v2", THREAD_AT_FIRST_REQUEST))
    out = server.output(mark)
    assert "cannot share the app" not in out, out
    found = re.search(COPIED, out)
    assert found, out
    gen, cause, copy, checked = found.group(1), found.group(2), *map(int, found.group(3, 4))
    assert gen == "2", out
    assert cause == "the ready check (GET /) started a thread ('started-by-a-request')", out
    assert [pid for pid, v in imports(tmp_path) if v == "v2"] == [checked]  # imported once
    wait_until(lambda: gone_or_zombie(checked), 10, f"the checked mold {checked} to leave")
    assert len(os.listdir(f"/proc/{copy}/task")) == 1  # the copy never ran the check
    assert_children_of_master(server, [copy, *new])
    shown = f"mold: generation 2 (pid {copy}"
    wait_until(lambda: shown in grace_cli("status", "--pid", str(server.pid)).stdout, 10, shown)
    resp = http_get(server.port)
    assert (resp.version, resp.pid in new) == ("v2", True), resp
    hup_to(server, tmp_path, 3)  # the copy is retired as a mold is
    wait_until(lambda: gone_or_zombie(copy), 10, f"the copy {copy} to be retired")
    wait_until(lambda: not zombies(server.pid), 10, "no zombies")
    assert server.stop() == 0


@pytest.mark.timeout(90)
def test_gunicorn_preload_a_thread_the_import_started_falls_back_with_a_ready_check(
    start_server, tmp_path
):
    """A thread the import started is the import's, ready check or not: each worker imports."""
    server = start(start_server, tmp_path, env=CHECKED)
    mark = server.mark()
    hup_to(server, tmp_path, 2, counted("v2", UNSAFE["thread"][0]))
    out = server.output(mark)
    assert UNSAFE["thread"][1] in out and not re.search(COPIED, out), out
    assert http_get(server.port).version == "v2"
    assert server.stop() == 0


#: A ready check that waits for the test's word (the file ``go``; 10 s at most) and then
#: starts a thread: time for the test to act on the copy while the mold runs the check.
GATED_THREAD = (
    "def status(environ):\n"
    "    import threading, time\n"
    "    if environ.get('HTTP_X_GRACE_READY_CHECK'):\n"
    "        gate = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'go')\n"
    "        for _ in range(200):\n"
    "            if os.path.exists(gate):\n"
    "                break\n"
    "            time.sleep(0.05)\n"
    "        threading.Thread(target=time.sleep, args=(600,), daemon=True).start()\n"
    "    return '200 OK'\n"
)


def hup_to_gated(server: Gunicorn, tmp_path) -> tuple[int, int, int]:
    """Write ``v2`` with :data:`GATED_THREAD`, HUP; (output mark, new mold, its copy) while the
    mold's check waits for the word."""
    before = set(child_pids(server.pid) or [])
    write_code(tmp_path, counted("v2", GATED_THREAD))
    mark = server.mark()
    os.kill(server.pid, signal.SIGHUP)
    found: list[int] = []

    def copy_made() -> bool:
        for mold in set(child_pids(server.pid) or []) - before:
            for copy in child_pids(mold) or []:
                found[:] = [mold, copy]
                return True
        return False

    wait_until(copy_made, 15, "the new mold's copy")
    return mark, found[0], found[1]


@pytest.mark.timeout(90)
def test_a_copy_killed_before_the_check_ends_is_a_fallback_not_a_rollback(start_server, tmp_path):
    """The copy is gone when the check leaves its thread: the generation is what it would have
    been without a copy (each worker imports), never rolled back."""
    server = start(start_server, tmp_path, env=CHECKED)
    mark, _, copy = hup_to_gated(server, tmp_path)
    os.kill(copy, signal.SIGKILL)
    (tmp_path / "go").touch()
    new = server.wait_promoted(2, mark)
    server.wait_until_workers(len(new))  # the previous workers gone (as after any HUP)
    out = server.output(mark)
    assert "cannot share the app between the workers: the ready check (GET /)" in out, out
    assert "rolled back" not in out, out
    resp = http_get(server.port)
    assert (resp.version, resp.pid in new) == ("v2", True), resp
    assert server.stop() == 0


@pytest.mark.timeout(90)
def test_a_copy_the_master_gave_up_on_leaves_quietly(start_server, tmp_path):
    """The copy, stopped until the master rolled the generation back (its mold's timeout),
    leaves without a word once it runs again: it never runs the master's code (no unhandled
    exception, the serving workers untouched) and is not left behind."""
    server = start(start_server, tmp_path, env=CHECKED, timeout=BROKEN_TIMEOUT)
    serving = set(server.workers())
    mark, _, copy = hup_to_gated(server, tmp_path)
    os.kill(copy, signal.SIGSTOP)
    try:
        (tmp_path / "go").touch()
        server.wait_for(r"generation 2 rolled back", 20, after=mark)
    finally:
        os.kill(copy, signal.SIGCONT)
    wait_until(lambda: gone_or_zombie(copy), 10, f"the copy {copy} to leave")
    out = server.output(mark)
    assert "Unhandled exception" not in out and "Traceback" not in out, out
    assert set(server.workers()) == serving
    assert http_get(server.port).version == "v1"
    wait_until(lambda: not zombies(server.pid), 10, "no zombies")
    assert server.stop() == 0


#: A ready check that forks a child which lives on (as ``multiprocessing`` with the fork
#: method does): it holds every fd the mold had, the copy's pipe included.
FORKS_A_CHILD = (
    "def status(environ):\n"
    "    import time\n"
    "    if environ.get('HTTP_X_GRACE_READY_CHECK') and os.fork() == 0:\n"
    "        time.sleep(8)\n"
    "        os._exit(0)\n"
    "    return '200 OK'\n"
)


@pytest.mark.timeout(90)
def test_a_check_that_forks_a_child_does_not_hold_the_generation(start_server, tmp_path):
    """A copy no longer needed is killed, not waited for: a child the check forked, which
    holds the copy's pipe, does not keep the generation from being ready in time."""
    server = start(start_server, tmp_path, env=CHECKED, timeout=BROKEN_TIMEOUT)
    mark = server.mark()
    new = hup_to(server, tmp_path, 2, counted("v2", FORKS_A_CHILD))
    assert "rolled back" not in server.output(mark)
    resp = http_get(server.port)
    assert (resp.version, resp.pid in new) == ("v2", True), resp
    assert server.stop() == 0
