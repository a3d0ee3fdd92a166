"""The gunicorn worker's rules, as tables (pure, no process started): the records of one
generation in, its verdict out; what a worker holding a SIGTERM does; and whether one that
reached ``max_requests`` exits."""

from __future__ import annotations

import sys
from typing import NoReturn

import pytest

pytest.importorskip("gunicorn")  # the package grace_plugins.gunicorn loads the worker class

from grace_plugins.gunicorn.held_term import (  # noqa: E402
    DRAIN,
    FORGET,
    HELD_LOOK,
    HELD_LOOK_FOR,
    TERM_SLACK,
    WAIT,
    look_interval,
    on_held_term,
)
from grace_plugins.gunicorn.recycle import why_serve_on  # noqa: E402
from grace_plugins.gunicorn.verdicts import (  # noqa: E402
    PENDING,
    PROMOTED,
    ROLLED_BACK,
    Announcement,
    GenerationRecords,
    Member,
    Verdict,
    forked_by_reload,
    gone_respawns,
    members,
    serving_workers,
    still_accepting,
    verdict,
)

#: Generation 2: two workers (ages 3 and 4), announced at t=100 with a 5 s ready timeout
#: (+3 s of grace: decided at t>108).
INFO = Announcement(expected=2, first_age=3, started=100.0, ready_timeout=5.0)
ALIVE = frozenset({30, 40, 50})


def records(*states: str, info: Announcement | None = INFO, **more) -> GenerationRecords:
    """``"3:ready"`` -> worker of age 3 (pid 30) recorded ``ready``; failures say "boom"."""
    found: dict[Member, dict[str, str]] = {}
    for text in states:
        age, state = text.split(":")
        member = Member(2, int(age), int(age) * 10)
        found.setdefault(member, {})[state] = "boom" if state == "failed" else ""
    return GenerationRecords(info, found, **more)


# (rule, records, now, pids alive) -> (kind, new verdict?, reason)
RULES = [
    ("every member ready: promoted",
     records("3:ready", "4:ready"), 101, ALIVE, PROMOTED, True, ""),
    ("a member not ready yet: pending",
     records("3:ready", "4:boot"), 101, ALIVE, PENDING, False, ""),
    ("a member failed: rolled back, naming it",
     records("3:ready", "4:failed"), 101, ALIVE, ROLLED_BACK, True, "worker 40 failed: boom"),
    ("a later respawn is not a member: its failure does not count",
     records("3:ready", "4:ready", "5:failed"), 101, ALIVE, PROMOTED, True, ""),
    ("a later respawn does not stand in for a member killed before it recorded",
     records("3:ready", "5:ready"), 101, ALIVE, PENDING, False, ""),
    ("a member died before ready: rolled back",
     records("3:ready", "4:boot"), 101, {30}, ROLLED_BACK, True,
     "worker 40 exited before it was ready"),
    ("a member that died once ready does not roll back",
     records("3:ready", "4:ready"), 101, {30}, PROMOTED, True, ""),
    ("slow members within ready timeout + grace: pending",
     records("3:boot", "4:boot"), 108, ALIVE, PENDING, False, ""),
    ("past ready timeout + grace: rolled back",
     records("3:boot", "4:boot"), 109, ALIVE, ROLLED_BACK, True,
     "not every new worker was ready within 8 s"),
    ("no announcement: rolled back",
     records("3:ready", info=None), 101, ALIVE, ROLLED_BACK, True, "its announcement is missing"),
    ("a recorded promotion stands",
     records("3:ready", recorded=PROMOTED), 101, ALIVE, PROMOTED, False, ""),
    ("a recorded rollback stands, with its reason, whatever the workers say since",
     records("3:ready", "4:ready", recorded="worker 40 failed: x"), 101, ALIVE, ROLLED_BACK,
     False, "worker 40 failed: x"),
    ("the master stops: an undecided generation stays pending",
     records("3:ready", "4:boot", master_stopping=True), 101, {30}, PENDING, False, ""),
    ("the master stops: a recorded verdict still stands",
     records("3:ready", recorded="why", master_stopping=True), 101, ALIVE, ROLLED_BACK, False,
     "why"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("found", "now", "alive", "kind", "new", "reason"),
    [rule[1:] for rule in RULES],
    ids=[rule[0] for rule in RULES],
)
def test_verdict(found, now, alive, kind, new, reason):
    assert verdict(found, now, lambda pid: pid in alive) == Verdict(kind, reason, new)


def test_a_verdict_reads_back_as_recorded():
    for one in (Verdict(PROMOTED, new=True), Verdict(ROLLED_BACK, "worker 4 failed: x", True)):
        assert Verdict.from_recorded(one.as_recorded()) == Verdict(one.kind, one.reason)


def test_members_are_the_workers_the_reload_forked():
    workers = [Member(2, age, age * 10) for age in (6, 3, 5, 4)]
    assert members(INFO, workers) == [Member(2, 3, 30), Member(2, 4, 40)]
    without_ages = Announcement(expected=2, first_age=0, started=0.0, ready_timeout=1.0)
    assert members(without_ages, workers) == [Member(2, 3, 30), Member(2, 4, 40)]
    assert members(None, workers) == []


def test_only_the_respawns_that_exited_are_forgotten():
    workers = [Member(2, age, age * 10) for age in (3, 4, 5, 6, 7)]  # 3 and 4: the members
    alive = {50, 70}.__contains__
    assert gone_respawns(INFO, workers, alive) == [Member(2, 6, 60)]
    assert gone_respawns(INFO, workers, lambda pid: False) == workers[2:]  # members stay
    without_ages = Announcement(expected=2, first_age=0, started=0.0, ready_timeout=1.0)
    assert gone_respawns(without_ages, workers[::-1], alive) == [Member(2, 6, 60)]
    assert gone_respawns(None, workers, alive) == []


def test_the_serving_workers_are_the_live_ready_ones_and_respawns_after_a_rollback():
    own = records("3:ready", "4:ready", "5:boot", "6:ready")  # 4 exited; 5 still imports
    rolled_back = GenerationRecords(
        Announcement(expected=1, first_age=7, started=110.0, ready_timeout=5.0),
        {Member(3, 7, 70): {"ready": ""}, Member(3, 8, 80): {"ready": ""}},  # member, respawn
        Verdict(ROLLED_BACK, "worker 70: the ready check failed").as_recorded(),
    )
    pending = GenerationRecords(INFO, {Member(4, 9, 90): {"ready": ""}})
    alive = {30, 50, 60, 70, 80, 90}.__contains__
    found = serving_workers(own, [rolled_back, pending], alive)
    assert [m.pid for m in found] == [30, 60, 80]
    assert [m.pid for m in serving_workers(own, [], lambda pid: False)] == []


def test_the_old_workers_still_accepting_are_the_live_ready_ones_not_yet_stopped():
    old = records("3:ready", "4:ready", "4:stopped", "5:boot", "6:ready")  # 6 exited
    older = records("7:ready", info=None)
    alive = {30, 40, 50, 70}.__contains__
    assert [m.pid for m in still_accepting([old, older], alive)] == [30, 70]
    assert still_accepting([], alive) == []


def test_a_member_is_known_by_its_age_before_it_left_a_record():
    assert [age for age in range(1, 7) if forked_by_reload(INFO, age)] == [3, 4]
    without_ages = Announcement(expected=2, first_age=0, started=0.0, ready_timeout=1.0)
    assert not forked_by_reload(without_ages, 3)  # unknown: it imports, as before
    assert not forked_by_reload(None, 3)


# -- a worker holding the reload's SIGTERM: drain, wait, or forget ---------------------------
# (rule, own generation, later generations' verdicts, master stopping, last SIGTERM at,
#  newest rolled back at) -> (action, reason)
TERM_RULES = [
    ("no newer generation: a stop", 2, {}, False, 10.0, None, (DRAIN, "SIGTERM")),
    ("the newest starts: wait", 1, {2: PENDING}, False, 10.0, None, (WAIT, "")),
    ("the newest is promoted: drain", 1, {2: PROMOTED}, False, 10.0, None,
     (DRAIN, "generation 2 is ready")),
    ("the master stops while the newest starts: drain", 1, {2: PENDING}, True, 10.0, None,
     (DRAIN, "SIGTERM (the master is stopping)")),
    ("the master stops at once after a rollback: drain", 1, {2: ROLLED_BACK}, True, 12.1, 12.0,
     (DRAIN, "SIGTERM (the master is stopping)")),
    ("rolled back, our SIGTERM came before: forget", 1, {2: ROLLED_BACK}, False, 10.0, 12.0,
     (FORGET, "")),
    ("rolled back, the reload's SIGTERM a little after the verdict: forget",
     1, {2: ROLLED_BACK}, False, 12.0 + TERM_SLACK, 12.0, (FORGET, "")),
    ("rolled back, a SIGTERM well after the verdict: a stop",
     1, {2: ROLLED_BACK}, False, 12.1 + TERM_SLACK, 12.0, (DRAIN, "SIGTERM")),
    ("a middle generation took over, the newest failed: drain",
     1, {2: PROMOTED, 3: ROLLED_BACK}, False, 10.0, 12.0, (DRAIN, "generation 2 is ready")),
    ("a middle generation took over, the newest starts: drain",
     1, {2: PROMOTED, 3: PENDING}, False, 10.0, None, (DRAIN, "generation 2 is ready")),
    ("only failed generations since ours: forget",
     1, {2: ROLLED_BACK, 3: ROLLED_BACK}, False, 10.0, 12.0, (FORGET, "")),
]  # fmt: skip


@pytest.mark.parametrize(
    ("own", "later", "stopping", "last_term", "rolled_back_at", "expected"),
    [row[1:] for row in TERM_RULES],
    ids=[row[0] for row in TERM_RULES],
)
def test_a_held_sigterm(own, later, stopping, last_term, rolled_back_at, expected):
    got = on_held_term(
        own,
        later,
        master_stopping=stopping,
        last_term=last_term,
        rolled_back_at=rolled_back_at,
    )
    assert got == expected


@pytest.mark.parametrize(
    ("held_for", "expected"),
    [
        (None, 0.1),  # no SIGTERM held: the worker's usual pace
        (0.0, HELD_LOOK),  # the reload's SIGTERM just came: the new generation is near
        (HELD_LOOK_FOR - 0.001, HELD_LOOK),
        (HELD_LOOK_FOR, 0.1),  # a slow reload: back to the usual pace
        (600.0, 0.1),
    ],
)
def test_a_worker_holding_a_sigterm_looks_at_the_verdicts_often_for_a_while(held_for, expected):
    assert look_interval(held_for, 0.1) == expected
    assert HELD_LOOK < 0.1


def test_an_exit_while_the_app_loads_is_a_failure_unless_a_quit_signal_asked_for_it():
    from grace_plugins.gunicorn.boot import AppExited, exits_are_failures

    def no_os_exit(reason: str, where: str) -> NoReturn:
        raise AssertionError(reason)

    with pytest.raises(AppExited, match=r"sys.exit\(3\)"), exits_are_failures(no_os_exit):
        sys.exit(3)
    quitting = True
    with pytest.raises(SystemExit) as exited, exits_are_failures(no_os_exit, lambda: quitting):
        sys.exit(0)
    assert exited.type is SystemExit and exited.value.code == 0


@pytest.mark.parametrize(
    ("own", "newest", "kind", "failed", "loading", "mold", "expected"),
    [
        (3, 3, None, 0, [], False, ""),  # its generation is the newest: replaced as gunicorn does
        (1, 0, None, 0, [], False, ""),  # no announcement read (records gone): as gunicorn does
        (2, 3, ROLLED_BACK, 0, [], False, "generation 3 was rolled back"),
        (2, 5, ROLLED_BACK, 0, [], False, "generation 5 was rolled back"),
        (2, 3, None, 0, [], False, "generation 3 is starting"),  # no verdict passed its code yet
        (2, 3, PROMOTED, 0, [], False, ""),  # it drains anyway
        (2, 3, PROMOTED, 0, [41], False, ""),
        (3, 3, None, 2, [], False, "the code on disk does not load (a respawn failed to load it)"),
        (3, 3, None, 0, [52, 41], False, "worker 41 is still loading it"),
        # forked from a mold: replaced from it, whatever the newer generation did...
        (2, 3, ROLLED_BACK, 0, [], True, ""),
        # ... but once respawns import (the mold and its spare gone), the rest holds
        (
            2,
            3,
            ROLLED_BACK,
            1,
            [],
            True,
            "the code on disk does not load (a respawn failed to load it)",
        ),
        (2, 2, None, 0, [41], True, "worker 41 is still loading it"),
    ],
)
def test_a_worker_at_max_requests_exits_only_if_its_replacement_can_serve(
    own, newest, kind, failed, loading, mold, expected
):
    assert why_serve_on(own, newest, kind, failed, loading, from_a_mold=mold) == expected
