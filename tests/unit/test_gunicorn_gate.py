"""The gunicorn gate's rules, as a table: records of one generation in, a verdict out (pure,
no process started); then the record directory's write-once publication."""

from __future__ import annotations

import os
import threading

import pytest

pytest.importorskip("gunicorn")  # the package grace_plugins.gunicorn loads the worker class

from grace_plugins.gunicorn.gate import (  # noqa: E402
    PENDING,
    PROMOTED,
    ROLLED_BACK,
    STOPPING,
    Facts,
    GateDir,
    Member,
    judge,
    on_pending_term,
)

#: Generation 2: two workers (ages 3 and 4), announced at t=100 with a 5 s ready timeout
#: (+3 s of grace: decided at t>108).
INFO = {"expected": 2, "first_age": 3, "started": 100.0, "ready_timeout": 5.0}
ALIVE = frozenset({30, 40, 50})


def records(*states: str) -> dict[Member, dict[str, str]]:
    """``"3:ready"`` -> worker of age 3 (pid 30) recorded ``ready``; failures say "boom"."""
    found: dict[Member, dict[str, str]] = {}
    for text in states:
        age, state = text.split(":")
        member = Member(2, int(age), int(age) * 10)
        found.setdefault(member, {})[state] = "boom" if state == "failed" else ""
    return found


# (rule, facts, now, pids alive) -> (status, new verdict?, reason contains)
RULES = [
    ("every member ready: promoted",
     Facts(INFO, records("3:ready", "4:ready")), 101, ALIVE, PROMOTED, True, ""),
    ("a member not ready yet: pending",
     Facts(INFO, records("3:ready", "4:boot")), 101, ALIVE, PENDING, False, ""),
    ("a member failed: rolled back, naming it",
     Facts(INFO, records("3:ready", "4:failed")), 101, ALIVE, ROLLED_BACK, True,
     "worker 40 failed: boom"),
    ("a later respawn is not a member: its failure does not count",
     Facts(INFO, records("3:ready", "4:ready", "5:failed")), 101, ALIVE, PROMOTED, True, ""),
    ("a later respawn does not stand in for a member killed before it recorded",
     Facts(INFO, records("3:ready", "5:ready")), 101, ALIVE, PENDING, False, ""),
    ("a member died before ready: rolled back",
     Facts(INFO, records("3:ready", "4:boot")), 101, {30}, ROLLED_BACK, True,
     "worker 40 exited before it was ready"),
    ("slow members within ready timeout + grace: pending",
     Facts(INFO, records("3:boot", "4:boot")), 104, ALIVE, PENDING, False, ""),
    ("past ready timeout + grace: rolled back",
     Facts(INFO, records("3:boot", "4:boot")), 109, ALIVE, ROLLED_BACK, True,
     "within 8 s"),
    ("no announcement: rolled back",
     Facts(None, records("3:ready")), 101, ALIVE, ROLLED_BACK, True, "announcement is missing"),
    ("a published promotion stays",
     Facts(INFO, records("3:ready"), PROMOTED, 101.0), 101, ALIVE, PROMOTED, False, ""),
    ("a published rollback stays, with its reason",
     Facts(INFO, records("3:ready", "4:ready"), "worker 40 failed: x", 101.0), 101, ALIVE,
     ROLLED_BACK, False, "worker 40 failed: x"),
    ("a plain SIGTERM recorded: the master is stopping",
     Facts(INFO, records("3:ready", "4:stopping")), 101, ALIVE, STOPPING, False, "stopping"),
    ("a plain SIGTERM even after a promotion: stopping",
     Facts(INFO, records("3:ready", "4:stopping"), PROMOTED, 101.0), 101, ALIVE, STOPPING,
     False, ""),
    ("a SIGTERM before the rollback was published: stopping",
     Facts(INFO, records("3:stopping"), "why", 101.0, (100.5,)), 102, ALIVE, STOPPING, False,
     ""),
    ("a SIGTERM after the rollback (the master's surplus kill): still rolled back",
     Facts(INFO, records("3:stopping"), "why", 101.0, (101.5,)), 102, ALIVE, ROLLED_BACK,
     False, "why"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("facts", "now", "alive", "status", "new", "reason"),
    [rule[1:] for rule in RULES],
    ids=[rule[0] for rule in RULES],
)
def test_rules(facts, now, alive, status, new, reason):
    verdict = judge(facts, now, lambda pid: pid in alive)
    assert (verdict.status, verdict.new) == (status, new)
    assert reason in verdict.reason


def test_gate_dir_records_one_verdict(tmp_path):
    """Reading the verdict writes nothing; publishing it succeeds once."""
    gate = GateDir(str(tmp_path))
    gate.open_generation(2, 1, 5.0, first_age=3)
    gate.record(Member(2, 3, os.getpid()), "ready")
    verdict = gate.status(2)
    assert (verdict.status, verdict.new) == (PROMOTED, True)
    assert gate.resolution(2) is None  # a query: nothing published yet
    assert gate.publish(2, verdict) and not gate.publish(2, verdict)
    assert not gate.status(2).new and gate.resolution(2) == PROMOTED
    assert gate.ever_ready() and gate.newest_generation() == 2
    assert gate.claim("logged", 2) and not gate.claim("logged", 2)
    created = GateDir.create()
    try:
        assert oct(os.stat(created.path).st_mode & 0o777) == "0o700"
    finally:
        created.remove()


def test_gate_verdicts_are_published_whole_and_once(tmp_path):
    """A verdict read while it is being written once looked empty, and an empty verdict passed
    for a rollback: readers must see no verdict or the whole one, and only the first writer
    wins."""
    gate = GateDir(str(tmp_path))
    text = "rolled back: " + "x" * 4000
    seen_partial: list[str] = []
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            for gen in range(1, 301):
                verdict = gate.resolution(gen)
                if verdict is not None and verdict not in (text, PROMOTED):
                    seen_partial.append(verdict[:20])

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for gen in range(1, 301):
            assert gate._write(f"resolved-{gen}", text if gen % 2 else PROMOTED, exclusive=True)
            assert not gate._write(f"resolved-{gen}", PROMOTED, exclusive=True)
    finally:
        done.set()
        thread.join(10)
    assert not thread.is_alive()
    assert seen_partial == []
    assert gate.resolution(1) == text and gate.resolution(2) == PROMOTED
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".tmp")]


# -- a worker holding the reload's SIGTERM: drain, wait, or forget ---------------------------
# (rule, own generation, later generations' status, last SIGTERM at, newest rolled back at)
#   -> (action, reason contains)
TERM_RULES = [
    ("no newer generation: a stop", 2, {}, 10.0, None, ("drain", "SIGTERM")),
    ("the newest starts: wait", 1, {2: PENDING}, 10.0, None, ("wait", "")),
    ("the newest is promoted: drain", 1, {2: PROMOTED}, 10.0, None, ("drain", "generation 2")),
    ("the master stops: drain", 1, {2: STOPPING}, 10.0, None, ("drain", "stopping")),
    (
        "rolled back, our SIGTERM came before: forget",
        1,
        {2: ROLLED_BACK},
        10.0,
        12.0,
        ("forget", ""),
    ),
    (
        "rolled back, a SIGTERM after the verdict: a stop",
        1,
        {2: ROLLED_BACK},
        13.0,
        12.0,
        ("drain", "SIGTERM"),
    ),
    (
        "a middle generation took over, the newest failed: drain",
        1,
        {2: PROMOTED, 3: ROLLED_BACK},
        10.0,
        12.0,
        ("drain", "generation 2"),
    ),
    (
        "a middle generation took over, the newest starts: drain",
        1,
        {2: PROMOTED, 3: PENDING},
        10.0,
        None,
        ("drain", "generation 2"),
    ),
    (
        "only failed generations since ours: forget",
        1,
        {2: ROLLED_BACK, 3: ROLLED_BACK},
        10.0,
        12.0,
        ("forget", ""),
    ),
]


@pytest.mark.parametrize(
    ("own", "later", "last_term", "rolled_back_at", "expected"),
    [row[1:] for row in TERM_RULES],
    ids=[row[0] for row in TERM_RULES],
)
def test_a_held_sigterm(own, later, last_term, rolled_back_at, expected):
    action, why = on_pending_term(own, later, last_term, rolled_back_at)
    assert action == expected[0]
    assert expected[1] in why
