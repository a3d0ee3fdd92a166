"""``grace-plugins status``: connections a draining generation still holds, from its ``left N``
message through the rules and the state file to the printed line. No process is started.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from grace_plugins import actions as act
from grace_plugins.__main__ import draining_line, main
from grace_plugins.process import ancestor_where, parent_pid
from grace_plugins.reporting import Reporter
from grace_plugins.state import StateFile
from tests.unit.test_rules import Driver, kinds
from tests.unit.test_supervisor import FakeNotifier, FakeState

pytestmark = pytest.mark.timeout(10)


def left(d: Driver, number: int, count: int) -> list[act.Action]:
    return d.feed(act.ConnectionsLeft(d.now, number, count))


# -- the rules ------------------------------------------------------------------------------------
def test_a_draining_generation_s_count_is_recorded_when_it_changes():
    d = Driver(drain_timeout=30.0).serving()
    d.upgrade(2)
    d.upgrade(3)
    (record,) = kinds(left(d, 1, 3), act.RecordDraining)
    assert [(g.number, g.left) for g in record.generations] == [(1, 3), (2, None)]
    assert left(d, 1, 3) == []  # no change: nothing to rewrite
    (record,) = kinds(left(d, 2, 1), act.RecordDraining)
    assert [(g.number, g.left) for g in record.generations] == [(1, 3), (2, 1)]
    (record,) = kinds(d.exit(1), act.RecordDraining)
    assert [(g.number, g.left) for g in record.generations] == [(2, 1)]


def test_a_count_from_a_generation_not_draining_is_ignored():
    d = Driver().serving()
    assert left(d, 1, 5) == []  # the serving generation
    assert left(d, 7, 5) == []  # unknown (already gone)
    d.upgrade(2)
    assert left(d, 2, 5) == []
    assert d.rules.gens.current is not None and d.rules.gens.current.left is None


def test_the_count_survives_a_cut():
    d = Driver(max_draining=1, drain_timeout=30.0).serving()
    d.upgrade(2)
    left(d, 1, 2)
    d.advance(2)
    d.signal(signal.SIGHUP)
    out = d.ready(3)
    (record,) = kinds(out, act.RecordDraining)
    assert [(g.number, g.cut, g.left) for g in record.generations] == [
        (1, True, 2),
        (2, False, None),
    ]


# -- the state file -------------------------------------------------------------------------------
def test_the_state_file_holds_the_count_only_when_known():
    reporter = Reporter(None, FakeNotifier([]))  # type: ignore[arg-type]
    state = FakeState([])
    reporter.state = state  # type: ignore[assignment]
    now = time.monotonic()
    record = act.RecordDraining(
        (act.Draining(1, 41, now + 5, False, left=2), act.Draining(2, 42, now + 9, False))
    )
    reporter.record_draining(record, now)
    first, second = state.data["draining"]  # type: ignore[misc]
    assert first["left"] == 2 and "left" not in second


# -- what status prints ---------------------------------------------------------------------------
def test_the_draining_line_with_and_without_a_count():
    now = 1000.0
    gen = {"generation": 3, "pid": 42, "deadline": now + 12.2, "cut": False}
    assert draining_line(gen, now) == "draining: generation 3 (pid 42), 12 s to its deadline"
    assert draining_line({**gen, "left": 4}, now) == (
        "draining: generation 3 (pid 42), 4 connections left, 12 s to its deadline"
    )
    assert draining_line({**gen, "left": 0, "cut": True, "deadline": now - 1}, now) == (
        "draining: generation 3 (pid 42), 0 connections left, 0 s to its deadline"
        " (cut short: more than max_draining drain)"
    )
    assert "left" not in draining_line({**gen, "left": "many"}, now)  # not a count: omitted


def test_status_prints_the_connections_left(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    state = StateFile()  # this process's pid: alive, as status requires
    state.update(
        listeners=["tcp:127.0.0.1:8000"],
        generation=3,
        generation_pid=43,
        generation_since=time.time(),
        draining=[
            {"generation": 1, "pid": 41, "deadline": time.time() + 20.4, "cut": False, "left": 2},
            {"generation": 2, "pid": 42, "deadline": time.time() + 25.4, "cut": False},
        ],
    )
    try:
        assert main(["status", "--pid", str(os.getpid())]) == 0
    finally:
        state.remove()
    out = capsys.readouterr().out
    assert "draining: generation 1 (pid 41), 2 connections left, 20 s to its deadline\n" in out
    assert "draining: generation 2 (pid 42), 25 s to its deadline\n" in out


def test_the_supervisor_above_a_generation_is_the_nearest_ancestor_with_a_state():
    """``reload --pid <a generation or a worker>`` names the process to ask instead."""
    parents = {40: 30, 30: 20, 20: 10, 10: 1, 50: 1}
    supervisors = {20, 10}
    find = lambda pid, depth=3: ancestor_where(pid, supervisors.__contains__, parents.get, depth)  # noqa: E731
    assert find(40) == 20  # a worker forked by a mold: two generations up
    assert find(30) == 20
    assert find(20) == 10
    assert find(40, depth=1) is None
    assert find(50) is None  # an orphan: init is nobody's supervisor
    assert find(99) is None  # no parent known (gone, or no /proc)


def test_parent_pid_reads_proc():
    if not os.path.exists("/proc/self/stat"):
        pytest.skip("no /proc here")
    assert parent_pid(os.getpid()) == os.getppid()
    assert parent_pid(2**22 + 1) is None  # above pid_max: no such process
