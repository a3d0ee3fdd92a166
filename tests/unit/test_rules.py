"""The supervisor's rules as a table of situations: events in, actions out, no process, no clock.

Each test drives :class:`grace_plugins.rules.Rules` with a fake clock (``now`` in each event)
and reads what it decided: the log lines (as the supervisor will print them), the processes
it starts, drains and kills, and what it tells systemd and the state file.
"""

from __future__ import annotations

import signal

import pytest

from grace_plugins import actions as act
from grace_plugins.errors import ExitCode
from grace_plugins.options import Options
from grace_plugins.outcome_hold import STOPPED_WAIT
from grace_plugins.rules import BACKOFF, KILL_GRACE, STABLE_AFTER, Rules

pytestmark = pytest.mark.timeout(10)


class Driver:
    """Rules plus a fake clock and fake pids; answers every Spawn as the loop would."""

    def __init__(self, **options: object) -> None:
        self.rules = Rules(Options(**options), ["tcp:127.0.0.1:8000"], 100)  # type: ignore[arg-type]
        self.now = 1000.0
        self.actions: list[act.Action] = []
        self.fail_spawn = False
        self.warm = False  # the spawner forks warm (a cold retry is always cold)

    def feed(self, event: act.Event) -> list[act.Action]:
        out = self._feed(event)
        self.actions += out
        return out

    def _feed(self, event: act.Event) -> list[act.Action]:
        out = []
        for action in self.rules.handle(event):
            out.append(action)
            if isinstance(action, act.Spawn):
                if self.fail_spawn:
                    answer: act.Event = act.SpawnFailed(self.now, action.number, "no such file")
                else:
                    warm = self.warm and not action.cold
                    answer = act.Spawned(self.now, action.number, 1000 + action.number, warm)
                out += self._feed(answer)
        return out

    def advance(self, seconds: float) -> list[act.Action]:
        self.now += seconds
        return self.feed(act.Tick(self.now))

    def begin(self) -> None:
        self.feed(act.Begin(self.now))

    def ready(self, number: int) -> list[act.Action]:
        return self.feed(act.Ready(self.now, number))

    def signal(self, signum: int) -> list[act.Action]:
        return self.feed(act.SignalEvent(self.now, signum))

    def exit(self, number: int, code: int = 0) -> list[act.Action]:
        return self.feed(act.Exited(self.now, number, code))

    def serving(self) -> Driver:
        """Start generation 1 and make it ready."""
        self.begin()
        self.ready(1)
        return self

    def upgrade(self, number: int, after: float = 2.0) -> None:
        """HUP (after the interval) and make the new generation ready."""
        self.advance(after)
        self.signal(signal.SIGHUP)
        self.ready(number)


def lines(actions: list[act.Action]) -> list[str]:
    return [a.text() for a in actions if isinstance(a, act.Log)]


def kinds(actions: list[act.Action], kind: type) -> list:
    return [a for a in actions if isinstance(a, kind)]


def spawned(actions: list[act.Action]) -> list[int]:
    return [a.number for a in kinds(actions, act.Spawn)]


# -- start --------------------------------------------------------------------------------------
def test_first_start_then_ready_says_how_to_upgrade_and_tells_systemd():
    d = Driver()
    d.begin()
    assert spawned(d.actions) == [1]
    assert lines(d.actions) == ["starting generation 1 (pid 1001) (start)"]
    out = d.ready(1)
    assert lines(out) == [
        "generation 1 (pid 1001) ready after 0 ms; serving tcp:127.0.0.1:8000."
        " Upgrade: kill -HUP 100. Stop: kill -TERM 100."
    ]
    (news,) = kinds(out, act.Serving)
    assert news.outcome is None and (news.number, news.pid) == (1, 1001)
    assert d.rules.gens.current is not None and d.rules.gens.current.number == 1


@pytest.mark.parametrize(
    ("returncode", "exit_code"),
    [(4, 4), (2, 2), (1, 1), (0, ExitCode.APP_LOAD_ERROR), (-signal.SIGKILL, 4)],
)
def test_a_failed_first_start_exits_as_the_program_did_in_one_line(returncode, exit_code):
    d = Driver()
    d.begin()
    out = d.exit(1, returncode)
    assert kinds(out, act.Kill) == [act.Kill(1, wait=True)]
    (line,) = lines(out)  # nothing drains: no "stopping" line
    assert line.startswith("the app failed to start: generation 1 (pid 1001) ")
    assert d.rules.exit_code == exit_code
    assert d.rules.finished and not d.rules.served


def test_a_first_start_past_its_deadline_exits_with_app_load_error():
    d = Driver(ready_timeout=2.0)
    d.begin()
    out = d.advance(2)
    assert lines(out) == [
        "the app failed to start: generation 1 (pid 1001) was not ready within 2 s"
    ]
    assert d.rules.exit_code == ExitCode.APP_LOAD_ERROR and d.rules.finished


def test_first_start_that_cannot_spawn_backs_off():
    d = Driver()
    d.fail_spawn = True
    d.begin()
    assert lines(d.actions) == [
        "cannot start generation 1: no such file",
        "next start attempt in 0.1 s (or at the next SIGHUP)",
    ]
    d.fail_spawn = False
    assert spawned(d.advance(0.1)) == [2]


# -- upgrades, coalescing, pacing ---------------------------------------------------------------
def test_upgrade_reports_reloading_then_ready_then_outcome():
    d = Driver().serving()
    d.advance(2)
    out = d.signal(signal.SIGHUP)
    assert lines(out) == ["upgrade started (SIGHUP): generation 2 (pid 1002)"]
    assert kinds(out, act.Notify) == [act.Notify("reloading", "upgrading to generation 2")]
    assert kinds(out, act.Record) == [act.Record({"in_progress": True})]
    d.now += 0.25
    out = d.ready(2)
    assert (
        lines(out)[0]
        == "generation 2 (pid 1002) ready after 250 ms; generation 1 (pid 1001) drains"
    )
    assert kinds(out, act.Drain) == [act.Drain(1)]
    assert kinds(out, act.Serving) == []  # until generation 1 no longer accepts
    (news,) = kinds(d.feed(act.StoppedAccepting(d.now, 1)), act.Serving)
    assert (news.outcome, news.detail, news.fields) == (
        "ok",
        "generation 2 (pid 1002) ready after 250 ms",
        {"ready_ms": 250},
    )
    assert [g.number for g in d.rules.gens.draining] == [1]


def test_triggers_while_starting_coalesce_into_one_followup():
    d = Driver().serving()
    d.advance(2)
    d.signal(signal.SIGHUP)
    first = d.signal(signal.SIGHUP)
    assert lines(first) == [
        "upgrade (SIGHUP) queued: generation 2 (pid 1002) is still starting;"
        " one follow-up upgrade will run"
    ]
    for _ in range(10):
        assert d.signal(signal.SIGHUP) == []  # queued once, said once
    d.feed(act.UpgradeAsked(d.now, 1))
    d.now += 2
    out = d.ready(2)
    assert spawned(out) == [3]
    assert "upgrade started (queued follow-up): generation 3 (pid 1003)" in lines(out)
    d.ready(3)
    assert spawned(d.advance(5)) == []  # one follow-up, no more


def test_upgrades_are_paced_by_the_interval():
    d = Driver(upgrade_interval=1.0).serving()
    d.advance(2)
    d.signal(signal.SIGHUP)
    d.now += 0.2
    d.ready(2)
    out = d.signal(signal.SIGHUP)
    assert spawned(out) == []
    assert "the last upgrade started less than 1 s ago" in lines(out)[0]
    assert d.rules.timeout(d.now) == pytest.approx(0.8)
    assert spawned(d.advance(0.5)) == []
    assert spawned(d.advance(0.3)) == [3]


def test_the_interval_does_not_pace_a_restart():
    d = Driver(upgrade_interval=10.0).serving()
    d.exit(1, 1)
    assert spawned(d.signal(signal.SIGHUP)) == [2]  # a HUP while waiting to restart: now


def test_upgrade_asked_by_a_generation_names_it():
    d = Driver().serving()
    d.advance(2)
    out = d.feed(act.UpgradeAsked(d.now, 1))
    assert lines(out) == [
        "upgrade started (requested by generation 1 (pid 1001)): generation 2 (pid 1002)"
    ]


# -- rollback -------------------------------------------------------------------------------------
def test_rollback_when_the_new_generation_exits():
    d = Driver().serving()
    d.upgrade(2)
    d.advance(2)
    d.signal(signal.SIGHUP)
    assert kinds(d.feed(act.ChannelClosed(d.now, 3)), act.Unwatch) == [act.Unwatch(3)]
    out = d.exit(3, 4)
    assert kinds(out, act.Kill) == [act.Kill(3, wait=True)] and act.Forget(3) in out
    assert lines(out) == [
        "upgrade rolled back: generation 3 (pid 1003) exited (exit status 4) before it was"
        " ready; generation 2 (pid 1002) keeps serving (its traceback, if any, is above)"
    ]
    (news,) = kinds(out, act.Serving)
    assert news.outcome == "rolled_back" and news.number is None
    assert (
        news.status
        == "upgrade rolled back: generation 3 exited (exit status 4) before it was ready"
    )
    assert d.rules.gens.current is not None and d.rules.gens.current.number == 2


def test_rollback_names_the_signal_that_killed_it():
    d = Driver().serving()
    d.advance(2)
    d.signal(signal.SIGHUP)
    assert "exited (killed by SIGABRT) before" in lines(d.exit(2, -signal.SIGABRT))[0]


def test_rollback_at_the_ready_deadline():
    d = Driver(ready_timeout=2.0).serving()
    d.advance(2)
    d.signal(signal.SIGHUP)
    assert d.rules.timeout(d.now) == pytest.approx(1.0)
    assert lines(d.advance(1.9)) == []
    out = d.advance(0.1)
    assert act.Kill(2, wait=True) in out
    assert "generation 2 (pid 1002) was not ready within 2 s" in lines(out)[0]


def test_ready_from_a_generation_rolled_back_is_ignored():
    d = Driver(ready_timeout=2.0).serving()
    d.advance(2)
    d.signal(signal.SIGHUP)
    d.advance(2)
    assert d.ready(2) == []
    assert d.rules.gens.current is not None and d.rules.gens.current.number == 1


def test_followup_runs_after_a_rollback():
    d = Driver().serving()
    d.advance(2)
    d.signal(signal.SIGHUP)
    d.signal(signal.SIGHUP)
    out = d.exit(2, 4)
    assert spawned(out) == [] and d.rules.timeout(d.now) == pytest.approx(1.0)  # the interval
    assert "upgrade started (queued follow-up): generation 3 (pid 1003)" in lines(d.advance(1))


# -- restarts -----------------------------------------------------------------------------------
def test_restart_backs_off_and_resets_after_a_stable_run():
    d = Driver().serving()
    d.advance(1)
    out = d.exit(1, 1)
    assert lines(out) == [
        "generation 1 (pid 1001) exited unexpectedly (exit status 1)",
        "next start attempt in 0.1 s (or at the next SIGHUP)",
    ]
    delays = []
    for number in range(2, 6):
        assert spawned(d.advance(BACKOFF[number - 2])) == [number]
        d.now += 0.1
        out = d.exit(number, 4)
        assert f"restart failed: generation {number} (pid {1000 + number})" in lines(out)[0]
        delays.append(lines(out)[1])
    assert delays == [
        f"next start attempt in {s:.1f} s (or at the next SIGHUP)" for s in BACKOFF[1:5]
    ]
    d.advance(BACKOFF[4])
    d.ready(6)
    d.advance(STABLE_AFTER + 1)
    out = d.exit(6, 1)
    assert "next start attempt in 0.1 s" in lines(out)[1]


def test_restart_that_comes_due_while_an_upgrade_starts_does_nothing():
    d = Driver().serving()
    d.exit(1, 1)
    d.signal(signal.SIGHUP)  # starts 2 at once
    assert spawned(d.advance(5)) == []


# -- stopping -----------------------------------------------------------------------------------
def test_stop_drains_then_finishes():
    d = Driver(drain_timeout=10.0).serving()
    out = d.signal(signal.SIGTERM)
    assert lines(out) == ["stopping (SIGTERM): draining"]
    assert act.Notify("stopping") in out and act.Drain(1) in out
    assert not d.rules.finished
    assert lines(d.signal(signal.SIGHUP)) == ["upgrade (SIGHUP) ignored: stopping"]
    d.exit(1, 0)
    assert d.rules.finished and d.rules.exit_code == ExitCode.OK


def test_stop_during_an_upgrade_kills_the_new_generation_and_drains_the_old():
    d = Driver().serving()
    d.advance(2)
    d.signal(signal.SIGHUP)
    out = d.signal(signal.SIGINT)
    assert act.Kill(2, wait=True) in out and act.Forget(2) in out and act.Drain(1) in out
    assert d.ready(2) == []  # it said ready before it died: not promoted while stopping
    out = d.exit(2, -9)
    assert lines(out) == []  # no rollback line while stopping
    late = d.feed(act.Spawned(d.now, 2, 1002, warm=True))  # a fork answered after the stop
    assert kinds(late, act.Kill) == [act.Kill(2, wait=True)] and act.Forget(2) in late
    assert d.ready(2) == []
    d.exit(1)
    assert d.rules.finished


def test_second_stop_kills_now_and_the_deadline_kills_anyway():
    d = Driver(drain_timeout=10.0).serving()
    d.signal(signal.SIGTERM)
    out = d.signal(signal.SIGTERM)
    assert lines(out) == ["SIGTERM again: stopping now"]
    assert act.Kill(1) in d.advance(0)
    d2 = Driver(drain_timeout=10.0).serving()
    d2.signal(signal.SIGTERM)
    assert act.Kill(1) not in d2.advance(10)
    out = d2.advance(KILL_GRACE)
    assert "generation 1 (pid 1001) still running after its drain deadline: killed" in lines(out)
    assert act.Kill(1) in out


# -- re-exec ------------------------------------------------------------------------------------
def test_usr2_preflights_at_once_and_reexecs_when_it_passes():
    d = Driver().serving()
    out = d.signal(signal.SIGUSR2)
    assert lines(out) == ["re-exec (SIGUSR2): checking that the new program starts"]
    assert kinds(out, act.Preflight) == [act.Preflight()] and kinds(out, act.Reexec) == []
    assert d.signal(signal.SIGUSR2) == []  # one preflight at a time
    out = d.feed(act.PreflightDone(d.now, None))
    assert kinds(out, act.Reexec) == [act.Reexec(1, 1001, 1)]
    assert lines(out) == ["re-exec (SIGUSR2): re-executing in place"]
    refused = d.feed(act.ReexecRefused(d.now, "exec failed (No such file or directory)"))
    assert lines(refused) == [
        "re-exec refused: exec failed (No such file or directory); serving on unchanged"
    ]


def test_a_passed_preflight_waits_for_the_upgrade_under_way_and_its_drain():
    d = Driver().serving()
    d.advance(2)
    d.signal(signal.SIGHUP)
    d.signal(signal.SIGUSR2)
    out = d.feed(act.PreflightDone(d.now, None))
    assert lines(out) == ["re-exec (SIGUSR2) deferred until the upgrade under way ends"]
    assert kinds(d.ready(2), act.Reexec) == []  # generation 1 drains now
    out = d.exit(1)
    assert kinds(out, act.Reexec) == [act.Reexec(2, 1002, 2)]


def test_a_failed_or_overdue_preflight_refuses_the_reexec():
    d = Driver(ready_timeout=3.0).serving()
    d.signal(signal.SIGUSR2)
    out = d.feed(act.PreflightDone(d.now, "it exited with status 1"))
    assert lines(out) == [
        "re-exec refused: the new program failed: it exited with status 1; serving on unchanged"
    ]
    assert kinds(d.advance(5), act.Reexec) == []
    d.signal(signal.SIGUSR2)
    assert d.rules.timeout(d.now) == pytest.approx(1.0)
    assert kinds(d.advance(2.9), act.StopPreflight) == []
    out = d.advance(0.1)
    assert kinds(out, act.StopPreflight) == [act.StopPreflight()]
    assert lines(out) == [
        "re-exec refused: it did not reach the grace_plugins entry point within 3 s;"
        " serving on unchanged"
    ]
    assert d.feed(act.PreflightDone(d.now, "killed by SIGKILL")) == []  # already said


def test_signals_are_served_while_the_preflight_runs():
    d = Driver().serving()
    d.advance(2)
    d.signal(signal.SIGUSR2)
    assert spawned(d.signal(signal.SIGHUP)) == [2]  # an upgrade does not wait for it
    out = d.signal(signal.SIGTERM)
    assert act.StopPreflight() in out and act.Kill(2, wait=True) in out and act.Drain(1) in out
    assert d.feed(act.PreflightDone(d.now, None)) == []  # stopping: no re-exec


def test_an_adopted_generation_is_upgraded():
    d = Driver()
    d.rules.adopt(7, 4242, 7, d.now)
    d.begin()
    assert lines(d.actions)[0] == (
        "supervisor re-executed (pid unchanged); adopted generation 7 (pid 4242); upgrading it"
    )
    assert spawned(d.actions) == [8]
    assert act.Record({"generation": 7, "generation_pid": 4242}) in d.actions


# -- warm start: the template's fault is not the code's ----------------------------------------
def test_a_warm_generation_that_fails_is_started_again_cold_before_any_rollback():
    d = Driver().serving()
    d.warm = True
    d.advance(2)
    d.signal(signal.SIGHUP)
    out = d.exit(2, 4)
    assert kinds(out, act.Serving) == []  # nothing rolled back yet
    assert lines(out)[0] == (
        "generation 2 (pid 1002), forked warm, exited (exit status 4) before it was ready;"
        " starting it again cold (the warm-start template may be at fault)"
    )
    assert kinds(out, act.Spawn) == [act.Spawn(2, cold=True)]
    assert "generation 2 (pid 1002) started cold" in lines(out)
    d.now += 0.5
    out = d.ready(2)
    assert lines(out)[0].startswith("generation 2 (pid 1002) ready after 500 ms;")
    assert act.Drain(1) in out and kinds(out, act.DropTemplate)
    assert "warm start: the template was at fault" in lines(out)[1]
    assert out[-1] == act.Refresh()


def test_a_failure_that_happens_cold_too_is_rolled_back_once():
    d = Driver().serving()
    d.warm = True
    d.advance(2)
    d.signal(signal.SIGHUP)
    d.exit(2, 4)
    out = d.exit(2, 4)
    assert kinds(out, act.Spawn) == [] and kinds(out, act.DropTemplate) == []
    assert lines(out) == [
        "upgrade rolled back: generation 2 (pid 1002) exited (exit status 4) before it was"
        " ready (so did its warm start); generation 1 (pid 1001) keeps serving (its traceback,"
        " if any, is above)"
    ]
    (news,) = kinds(out, act.Serving)
    assert news.outcome == "rolled_back"


def test_a_warm_generation_past_its_deadline_is_retried_cold_with_a_fresh_deadline():
    d = Driver(ready_timeout=2.0).serving()
    d.warm = True
    d.advance(2)
    d.signal(signal.SIGHUP)
    out = d.advance(2)
    assert "was not ready within 2 s; starting it again cold" in lines(out)[0]
    assert d.rules.timeout(d.now) == pytest.approx(1.0)
    assert kinds(d.advance(1.9), act.Serving) == []
    assert "(so did its warm start)" in lines(d.advance(0.1))[0]


# -- never wait for drains (issue 13) -------------------------------------------------------------
def promoted(d: Driver, number: int = 2) -> list[act.Action]:
    """HUP after the interval; generation *number* says ready: what the promotion did."""
    d.advance(2)
    d.signal(signal.SIGHUP)
    return d.ready(number)


def outcomes(actions: list[act.Action]) -> list[str | None]:
    return [a.outcome for a in kinds(actions, act.Serving)]


def test_the_outcome_waits_until_the_old_generation_stopped_accepting():
    """``grace-plugins reload`` returns on the recorded outcome: a smoke test right after must
    meet the new code, so the old generation gets its drain order and the outcome waits for
    its ``stopped`` (not for its drain)."""
    d = Driver().serving()
    out = promoted(d)
    assert kinds(out, act.Drain) == [act.Drain(1)] and outcomes(out) == []
    assert d.rules.timeout(d.now) == pytest.approx(STOPPED_WAIT)
    assert outcomes(d.feed(act.StoppedAccepting(d.now, 2))) == []  # not the old one
    assert outcomes(d.feed(act.StoppedAccepting(d.now, 1))) == ["ok"]
    assert outcomes(d.advance(STOPPED_WAIT)) == []  # recorded once


@pytest.mark.parametrize(
    "gone",
    [
        lambda d: d.exit(1),
        lambda d: d.feed(act.ChannelClosed(d.now, 1)),
        lambda d: d.advance(STOPPED_WAIT),  # an old generation of an older version never says it
        lambda d: d.signal(signal.SIGTERM),  # the upgrade did end
    ],
    ids=["exited", "channel closed", "past the wait", "stop"],
)
def test_the_outcome_is_recorded_once_the_old_generation_is_gone_or_at_the_latest(gone):
    d = Driver().serving()
    promoted(d)
    assert outcomes(d.advance(STOPPED_WAIT / 2)) == []
    assert outcomes(gone(d)) == ["ok"]


def test_a_held_outcome_is_recorded_before_the_next_upgrade_shows_in_progress():
    d = Driver(upgrade_interval=STOPPED_WAIT / 2).serving()
    promoted(d)
    out = d.advance(0.1) + d.signal(signal.SIGHUP)  # queued: within the upgrade interval
    assert outcomes(out) == []
    out = d.advance(STOPPED_WAIT / 2)  # the follow-up starts; the hold's wait is not over
    assert spawned(out) == [3]
    records = [a for a in out if isinstance(a, (act.Serving, act.Record))]
    assert isinstance(records[0], act.Serving) and records[0].outcome == "ok"
    assert act.Record({"in_progress": True}) in records[1:]


def test_an_upgrade_starts_at_once_while_older_generations_drain():
    d = Driver(drain_timeout=30.0).serving()
    d.upgrade(2)
    d.upgrade(3)
    assert [g.number for g in d.rules.gens.draining] == [1, 2]
    d.advance(2)
    out = d.signal(signal.SIGHUP)
    assert spawned(out) == [4]
    assert lines(out) == ["upgrade started (SIGHUP): generation 4 (pid 1004)"]


def test_each_draining_generation_has_its_own_deadline():
    d = Driver(drain_timeout=10.0).serving()
    d.upgrade(2, after=2)  # generation 1 drains from t+2
    d.upgrade(3, after=3)  # generation 2 drains from t+5
    (first, second) = d.rules.gens.draining
    assert (second.deadline - first.deadline) == pytest.approx(3.0)
    out = d.advance(10 + KILL_GRACE - 3)  # past generation 1's kill deadline only
    assert kinds(out, act.Kill) == [act.Kill(1)]
    out = d.advance(3)
    assert kinds(out, act.Kill) == [act.Kill(1), act.Kill(2)]  # 1 again (every second), 2 now


def test_past_max_draining_the_oldest_drain_is_cut_short():
    d = Driver(max_draining=2, drain_timeout=30.0).serving()
    d.upgrade(2)
    d.upgrade(3)
    assert kinds(d.actions, act.Drain) == [act.Drain(1), act.Drain(2)]
    d.advance(2)
    d.signal(signal.SIGHUP)
    out = d.ready(4)
    assert lines(out)[1] == (
        "generation 1 (pid 1001) drain cut short: 3 generations draining, more than"
        " max_draining=2; what it still holds is closed now"
    )
    assert kinds(out, act.Drain) == [act.Drain(3), act.Drain(1)]  # a second order to 1: now
    (record,) = kinds(out, act.RecordDraining)
    assert [(g.number, g.cut) for g in record.generations] == [(1, True), (2, False), (3, False)]
    assert record.generations[0].deadline == d.now
    # the cut generation is killed after the grace, not at its own 30 s deadline
    assert kinds(d.advance(KILL_GRACE), act.Kill) == [act.Kill(1)]
    d.exit(1, -9)
    d.upgrade(5)  # 2 and 3 uncut plus 4: cut 2, never 1 twice
    assert "generation 2 (pid 1002) drain cut short" in " ".join(lines(d.actions))


def test_draining_generations_are_recorded_as_they_come_and_go():
    d = Driver(drain_timeout=30.0).serving()
    d.upgrade(2)
    d.upgrade(3)
    out = d.exit(1)
    (record,) = kinds(out, act.RecordDraining)
    assert [g.number for g in record.generations] == [2]
    assert record.generations[0].deadline == pytest.approx(d.now + 30.0)


def test_an_upgrade_that_cannot_spawn_is_rolled_back_and_its_followup_runs():
    d = Driver().serving()
    d.warm = True
    d.advance(2)
    d.signal(signal.SIGHUP)
    d.signal(signal.SIGHUP)  # queued while the first one is under way
    d.fail_spawn = True  # its cold retry cannot start (the directory moved away)
    out = d.exit(2, 4)
    (news,) = kinds(out, act.Serving)
    assert news.outcome == "rolled_back"  # `grace-plugins reload` hears it; in_progress ends
    assert lines(out)[-1] == (
        "upgrade rolled back: generation 2 could not be started (no such file); generation 1"
        " (pid 1001) keeps serving (its traceback, if any, is above)"
    )
    assert not any("next start attempt" in line for line in lines(out))  # one is serving
    d.fail_spawn = False
    assert "upgrade started (queued follow-up): generation 3 (pid 1003)" in lines(d.advance(1))
    d.ready(3)
    assert d.rules.gens.current is not None and d.rules.gens.current.number == 3


def test_an_upgrade_that_cannot_spawn_at_all_is_rolled_back():
    d = Driver().serving()
    d.advance(2)
    d.fail_spawn = True
    out = d.signal(signal.SIGHUP)
    assert kinds(out, act.Serving)[-1].outcome == "rolled_back"
    assert lines(out)[-1].startswith("upgrade rolled back: generation 2 could not be started")
    assert d.rules.gens.pending is None and d.rules.gens.current.number == 1
