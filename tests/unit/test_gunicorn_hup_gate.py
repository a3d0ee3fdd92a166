"""When a HUP reaches gunicorn's reload: the gunicorn master's coalescing rule as a table (pure,
no process started), a storm replayed through it, and the lookout thread's order (a verdict
reported before the HUP it frees)."""

from __future__ import annotations

import logging
import time

import pytest

pytest.importorskip("gunicorn")  # the package grace_plugins.gunicorn loads the worker class

from grace_plugins.gunicorn.hup_gate import HupGate, Newest  # noqa: E402
from grace_plugins.gunicorn.lookout import Lookout  # noqa: E402
from grace_plugins.gunicorn.records import RecordStore  # noqa: E402
from grace_plugins.gunicorn.verdicts import PROMOTED, Announcement, Verdict  # noqa: E402
from grace_plugins.pacing import Pacing  # noqa: E402

INTERVAL, LIMIT = 1.0, 10.0
#: generation 2 decided; generation 3 starting until t=50 (its ready timeout)
DECIDED = Newest(2, True, 40.0)
STARTING = Newest(3, False, 50.0)


def gate(handed_at: float | None = None, after: int = 2, follow_up: bool = False) -> HupGate:
    pacing = Pacing(INTERVAL, upgrade_started=handed_at, followup=follow_up)
    return HupGate(LIMIT, pacing, after)


# (case, gate before, now, newest) -> (handed over now?, follow-up held after)
HUPS = [
    ("nothing starting, no recent start: handed over",
     gate(), 20.0, DECIDED, True, False),
    ("the newest generation has no verdict: held",
     gate(), 20.0, STARTING, False, True),
    ("the newest undecided past its ready timeout: no longer starting",
     gate(), 51.0, STARTING, True, False),
    ("the last HUP handed over opened no generation yet: held",
     gate(handed_at=19.5), 20.0, DECIDED, False, True),
    ("the last HUP handed over opened none within the limit: handed over",
     gate(handed_at=5.0), 20.0, DECIDED, True, False),
    ("a start less than the interval ago, its generation decided: held",
     gate(handed_at=19.5, after=1), 20.0, DECIDED, False, True),
    ("a start the interval ago, its generation decided: handed over",
     gate(handed_at=19.0, after=1), 20.0, DECIDED, True, False),
    ("a follow-up already held: joined, never handed over ahead of it",
     gate(follow_up=True), 20.0, DECIDED, False, True),
]  # fmt: skip


@pytest.mark.parametrize(
    ("before", "now", "newest", "handed", "held"),
    [case[1:] for case in HUPS],
    ids=[case[0] for case in HUPS],
)
def test_a_hup(before, now, newest, handed, held):
    assert before.hup(now, newest) is handed
    assert before.follow_up is held
    if handed:
        assert (before.pacing.upgrade_started, before.handed_after) == (now, newest.number)


# (case, gate before, now, newest) -> the follow-up goes now?
FOLLOW_UPS = [
    ("none held", gate(handed_at=1.0, after=1), 20.0, DECIDED, False),
    ("held, its generation still starting", gate(1.0, 2, True), 20.0, STARTING, False),
    ("held, decided, the interval passed", gate(18.0, 1, True), 20.0, DECIDED, True),
    ("held, decided, within the interval", gate(19.5, 1, True), 20.0, DECIDED, False),
    ("held, the HUP handed over opened nothing yet", gate(19.0, 2, True), 20.0, DECIDED, False),
]  # fmt: skip


@pytest.mark.parametrize(
    ("before", "now", "newest", "goes"),
    [case[1:] for case in FOLLOW_UPS],
    ids=[case[0] for case in FOLLOW_UPS],
)
def test_the_follow_up(before, now, newest, goes):
    assert before.due(now, newest) is goes
    assert before.follow_up is (not goes and before.follow_up)
    if goes:
        assert before.pacing.upgrade_started == now


def test_a_storm_is_two_reloads_and_the_last_hup_is_served_after_it():
    """20 HUPs within a second while each generation takes 0.7 s to be decided: the first is
    handed over, the other 19 are one follow-up, handed over once the first generation is
    decided and the interval has passed: after the last HUP of the storm."""
    rules = HupGate(LIMIT, Pacing(INTERVAL))
    newest = Newest(1, True, 0.0)
    handed: list[float] = []

    def step(now: float, hup: bool) -> None:
        nonlocal newest
        if handed and newest.number == len(handed) and now >= handed[-1] + 0.05:
            newest = Newest(len(handed) + 1, False, now + 30)  # gunicorn opened it
        if handed and not newest.decided and now >= handed[-1] + 0.7:
            newest = Newest(newest.number, True, newest.until)
        if (hup and rules.hup(now, newest)) or rules.due(now, newest):
            handed.append(now)

    for tick in range(300):  # 3 s in 10 ms steps; a HUP every 50 ms during the first second
        step(tick / 100, hup=tick % 5 == 0 and tick < 100)
    assert len(handed) == 2
    assert handed[0] == 0.0 and handed[1] >= 0.95  # after the storm's last HUP (t=0.95)


def test_dropped_when_the_master_stops():
    rules = gate(follow_up=True)
    rules.drop()
    assert not rules.due(30.0, DECIDED)


# (case, gate, now, newest) -> busy: the master's lookout steps fast (else slowly, idle)
BUSY = [
    ("all decided, nothing held: idle", gate(), 20.0, DECIDED, False),
    ("a generation starting", gate(), 20.0, STARTING, True),
    ("a generation undecided past its ready timeout: idle", gate(), 51.0, STARTING, False),
    ("a HUP handed over, no generation announced yet", gate(handed_at=19.9), 20.0, DECIDED, True),
    ("a follow-up held", gate(handed_at=19.5, after=1, follow_up=True), 20.0, DECIDED, True),
]  # fmt: skip


@pytest.mark.parametrize(
    ("rules", "now", "newest", "busy"),
    [case[1:] for case in BUSY],
    ids=[case[0] for case in BUSY],
)
def test_busy(rules, now, newest, busy):
    assert rules.busy(now, newest) is busy


def test_a_verdict_that_frees_a_held_hup_is_reported_before_the_hup(tmp_path):
    """A HUP held while generation 1 starts; its verdict is recorded by a worker while the
    lookout thread reports (the step): the HUP must go to gunicorn only after a step that saw
    the verdict (systemd hears READY=1 for generation 1 before the reload's RELOADING=1)."""
    store = RecordStore(str(tmp_path))
    store.announce(1, Announcement(expected=1, first_age=1, started=time.time(), ready_timeout=30))
    seen: list[bool] = []
    handed: list[bool] = []

    def step() -> bool:
        seen.append(store.recorded_verdict(1) is not None)
        if len(seen) == 2:  # a worker records the verdict right after this step looked
            store.record_verdict(1, Verdict(PROMOTED, ""))
        return False

    hup_through_lookout(store, step, lambda: handed.append(seen[-1]), handed, turns=6)
    assert handed == [True], (seen, handed)  # the step before the hand-over saw the verdict


def test_a_hup_waits_while_the_report_of_a_promotion_waits_for_the_old_workers(tmp_path):
    """The step holds a promotion's report until the old workers stopped accepting (systemd's
    ``READY=1`` with it): the next reload's ``RELOADING=1`` must not come before it."""
    store = RecordStore(str(tmp_path))
    store.announce(1, Announcement(expected=1, first_age=1, started=time.time(), ready_timeout=30))
    store.record_verdict(1, Verdict(PROMOTED, ""))
    holding = [True, True, False]  # what each step says
    handed: list[int] = []
    hup_through_lookout(
        store, lambda: holding.pop(0), lambda: handed.append(len(holding)), handed, turns=3
    )
    assert handed == [0]  # handed over at the step that no longer held the report


def hup_through_lookout(store, step, hand_over, handed: list, turns: int) -> None:
    """One HUP heard by a lookout thread's turns (run here, not on its thread), until handed."""
    lookout = Lookout(store, logging.getLogger("test"), step, hand_over)
    lookout.heard_hup()
    for _ in range(turns):
        lookout._turn()
        lookout._wait = 0.0
        if handed:
            break
