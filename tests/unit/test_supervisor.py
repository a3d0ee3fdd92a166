"""The supervisor's loop and effects with a fake spawner: no process is started.

A fake "generation" is the far end of its real channel (a socketpair the supervisor passes in
``pass_fds``): it says ``ready`` and exits when told to drain, so the loop, the selector, the
signal wakeup pipe and the reporting run for real, in this process.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

import pytest

from grace_plugins import actions as act
from grace_plugins import effects as effects_module
from grace_plugins.handoff import HANDOFF_VAR
from grace_plugins.options import Options
from grace_plugins.process import Spawner, StartAgainCold, Started
from grace_plugins.reporting import Reporter
from grace_plugins.supervisor import Supervisor

pytestmark = pytest.mark.timeout(20)


class FakeProcess:
    """A generation as the supervisor sees it: exits when drained, signalled or told to."""

    def __init__(self, pid: int, channel: socket.socket, answer: str | None) -> None:
        self.pid = pid
        self.channel = channel
        self.returncode: int | None = None
        self.signals: list[int] = []
        self.heard: list[str] = []
        channel.setblocking(False)
        if answer:
            channel.sendall(answer.encode() + b"\n")

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                data = self.channel.recv(4096)
            except BlockingIOError:
                data = None
            if data:
                self.heard += data.decode().split()
                if "drain" in self.heard:
                    self.exit(0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        assert self.returncode is not None, "waited for a process that never exits"
        return self.returncode

    def exit(self, code: int) -> None:
        if self.returncode is None:
            self.returncode = code
            self.channel.close()


class FakeSpawner(Spawner):
    """Records each spawn; the fake generation answers ``ready`` unless told otherwise."""

    def __init__(self, answers: list[str | None] | None = None, fail: bool = False) -> None:
        self.answers = answers or []
        self.fail = fail
        self.spawned: list[tuple[list[str], dict[str, str], list[int], FakeProcess]] = []
        self.signalled: list[tuple[int, int]] = []

    def spawn(self, request):
        if self.fail:
            raise OSError(2, "No such file or directory")
        theirs = socket.socket(fileno=os.dup(request.pass_fds[-1]))
        answer = self.answers.pop(0) if self.answers else "ready"
        process = FakeProcess(5000 + len(self.spawned), theirs, answer)
        self.spawned.append((request.argv, request.env, request.pass_fds, process))
        return Started(request.number, process)  # type: ignore[arg-type]

    def signal_group(self, process, signum):
        self.signalled.append((process.pid, signum))
        if signum in (signal.SIGKILL, signal.SIGTERM):
            process.exit(-signum)


class FakeNotifier:
    def __init__(self, events: list[str]) -> None:
        self.events = events

    def ready(self, status: str) -> bool:
        self.events.append(f"READY=1 {status}")
        return True

    def reloading(self, status: str) -> bool:
        self.events.append(f"RELOADING=1 {status}")
        return True

    def stopping(self) -> bool:
        self.events.append("STOPPING=1")
        return True


class FakeState:
    def __init__(self, events: list[str]) -> None:
        self.events = events
        self.data: dict[str, object] = {}

    def update(self, **fields: object) -> None:
        self.data.update(fields)
        self.events.append(f"state {sorted(fields)}")

    def record_upgrade(self, outcome: str, detail: str, **fields: object) -> None:
        self.events.append(f"outcome {outcome}")

    def remove(self) -> None:
        self.events.append("state removed")


def make(listener, spawner, events=None, **options):
    events = [] if events is None else events
    sup = Supervisor(
        [listener],
        Options(**options),
        argv=["python", "app.py"],
        spawner=spawner,
        notifier=FakeNotifier(events),  # type: ignore[arg-type]
    )
    sup.effects.report.state = FakeState(events)  # type: ignore[assignment]
    return sup, events


def feed(sup: Supervisor, event: act.Event) -> None:
    sup.post(event)
    sup.dispatch()


def run_until(sup: Supervisor, predicate, what: str, timeout: float = 5.0) -> None:
    """Turn the loop until *predicate*; each turn plays a SIGCHLD (a fake generation "exits"
    when it reads ``drain``: the reaping that SIGCHLD starts must notice it)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        os.write(sup.wake_w, bytes([signal.SIGCHLD]))
        sup.wait()
        sup.dispatch()


def serve_then_hup(sup: Supervisor) -> None:
    """Start generation 1, turn the loop until it is ready, then ask for an upgrade."""
    feed(sup, act.Begin(sup.now()))
    run_until(sup, lambda: sup.rules.gens.current is not None, "generation 1 ready")
    feed(sup, act.SignalEvent(sup.now(), signal.SIGHUP))


def test_spawn_passes_only_the_listeners_and_the_channel(listener, monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/notify")
    spawner = FakeSpawner()
    sup, _ = make(listener, spawner)
    feed(sup, act.Begin(sup.now()))
    argv, env, pass_fds, process = spawner.spawned[0]
    assert argv == ["python", "app.py"]
    assert pass_fds[0] == listener.fileno() and len(pass_fds) == 2
    assert HANDOFF_VAR in env and "NOTIFY_SOCKET" not in env
    with pytest.raises(OSError):
        os.fstat(pass_fds[1])  # the supervisor closed its copy of the generation's end
    run_until(sup, lambda: sup.rules.gens.current is not None, "generation 1 ready")
    process.exit(0)
    for child in sup.children.values():
        child.channel.close()


def test_upgrade_then_stop_systemd_hears_ready_before_the_outcome(listener):
    spawner = FakeSpawner()
    sup, events = make(listener, spawner)
    serve_then_hup(sup)
    run_until(sup, lambda: "outcome ok" in events, "the upgrade's outcome")
    assert events.index("outcome ok") > events.index("READY=1 serving with generation 2 (pid 5001)")
    assert events.index("RELOADING=1 upgrading to generation 2") < events.index("outcome ok")
    run_until(sup, lambda: not sup.rules.gens.draining, "generation 1 to drain and exit")
    assert spawner.spawned[0][3].heard == ["drain"]
    feed(sup, act.SignalEvent(sup.now(), signal.SIGTERM))
    run_until(sup, lambda: sup.rules.finished, "the stop")
    assert sup.children == {}
    assert sup.exit_code == 0


def test_rollback_kills_and_reaps_the_new_generation(listener):
    spawner = FakeSpawner(answers=["ready", None])
    sup, events = make(listener, spawner, ready_timeout=0.2)
    serve_then_hup(sup)
    run_until(sup, lambda: sup.rules.gens.pending is None, "the ready deadline")
    assert (5001, signal.SIGKILL) in spawner.signalled
    assert "outcome rolled_back" in events and 2 not in sup.children
    spawner.spawned[0][3].exit(0)
    run_until(sup, lambda: sup.rules.gens.current is None, "generation 1 exit")
    feed(sup, act.SignalEvent(sup.now(), signal.SIGTERM))
    assert sup.rules.finished


class HoldingSpawner(FakeSpawner):
    """Holds the spawn of generation 2 (its outcome would come later, as a warm start's)."""

    def __init__(self) -> None:
        super().__init__()
        self.cancelled: list[int] = []

    def spawn(self, request):
        return None if request.number == 2 else super().spawn(request)

    def cancel(self, number: int) -> None:
        self.cancelled.append(number)


def test_a_held_spawn_given_up_at_its_ready_deadline_is_cancelled(listener):
    spawner = HoldingSpawner()
    sup, events = make(listener, spawner, ready_timeout=0.2)
    serve_then_hup(sup)
    run_until(sup, lambda: "outcome rolled_back" in events, "the ready deadline")
    assert spawner.cancelled == [2]  # its channel end is closed: it must never start now
    spawner.spawned[0][3].exit(0)
    run_until(sup, lambda: sup.rules.gens.current is None, "generation 1 exit")
    feed(sup, act.SignalEvent(sup.now(), signal.SIGTERM))
    assert sup.rules.finished and spawner.cancelled == [2]


class LateSpawner(FakeSpawner):
    """Answers generation 2's spawn later, from a source, with a process that exited
    meanwhile: a warm fork the supervisor reaped as an orphan before the template's answer
    named it (its SIGCHLD is spent)."""

    def attach(self, add, remove) -> None:
        self.answer_r, self.answer_w = socket.socketpair()
        add(self.answer_r, self._answer)

    def spawn(self, request):
        if request.number != 2:
            return super().spawn(request)
        self.held = request
        return None

    def _answer(self):
        self.answer_r.recv(1)
        theirs = socket.socket(fileno=os.dup(self.held.pass_fds[-1]))
        process = FakeProcess(5001, theirs, None)
        process.exit(3)
        return [Started(2, process)]  # type: ignore[arg-type]


def test_a_generation_gone_before_its_pid_came_fails_at_once(listener):
    spawner = LateSpawner()
    sup, events = make(listener, spawner)  # the ready timeout: 30 s
    serve_then_hup(sup)
    assert sup.rules.gens.pending is not None
    spawner.answer_w.send(b"!")
    sup.wait()  # no SIGCHLD: the answer is all that comes
    sup.dispatch()
    assert "outcome rolled_back" in events and sup.rules.gens.pending is None
    assert sup.rules.gens.current.number == 1
    spawner.spawned[0][3].exit(0)
    run_until(sup, lambda: sup.rules.gens.current is None, "generation 1 exit")
    feed(sup, act.SignalEvent(sup.now(), signal.SIGTERM))
    assert sup.rules.finished
    spawner.answer_r.close()
    spawner.answer_w.close()


class GiveUpSpawner(FakeSpawner):
    """Sends generation 2's fork (keeps the channel end the template would get), then gives it
    up from a source: start it again cold."""

    def attach(self, add, remove) -> None:
        self.answer_r, self.answer_w = socket.socketpair()
        add(self.answer_r, self._give_up)
        self.colds: list[int] = []

    def spawn(self, request):
        if request.number == 2 and not request.cold:
            self.late_fork_end = socket.socket(fileno=os.dup(request.pass_fds[-1]))
            return None
        if request.cold:
            self.colds.append(request.number)
        return super().spawn(request)

    def _give_up(self):
        self.answer_r.recv(1)
        return [StartAgainCold(2)]


def test_a_given_up_fork_starts_cold_on_a_new_channel(listener):
    spawner = GiveUpSpawner()
    sup, _ = make(listener, spawner)
    serve_then_hup(sup)
    spawner.answer_w.send(b"!")
    run_until(sup, lambda: sup.rules.gens.current.number == 2, "generation 2 ready")
    assert spawner.colds == [2]
    spawner.late_fork_end.settimeout(5)
    assert spawner.late_fork_end.recv(1) == b""  # a late fork of it would leave at once
    for _, _, _, process in spawner.spawned:
        process.exit(0)
    run_until(sup, lambda: not sup.rules.gens.all(), "the generations' exits")
    feed(sup, act.SignalEvent(sup.now(), signal.SIGTERM))
    assert sup.rules.finished
    for sock in (spawner.answer_r, spawner.answer_w, spawner.late_fork_end):
        sock.close()


def test_spawn_failure_is_logged_and_retried(listener, caplog):
    spawner = FakeSpawner(fail=True)
    sup, _ = make(listener, spawner)
    feed(sup, act.Begin(sup.now()))
    assert sup.rules.gens.pending is None and sup.rules.pace.restart_at is not None
    spawner.fail = False
    run_until(sup, lambda: sup.rules.gens.current is not None, "the restart")
    assert sup.rules.gens.current.number == 2
    feed(sup, act.SignalEvent(sup.now(), signal.SIGTERM))
    run_until(sup, lambda: sup.rules.finished, "the stop")


class FakePreflight:
    """The preflight run: still running until told to exit."""

    pid = 4999
    returncode: int | None = None

    def poll(self) -> int | None:
        return self.returncode


def test_usr2_refused_by_preflight_serves_on_and_signals_are_served_meanwhile(
    listener, monkeypatch
):
    preflight = FakePreflight()
    monkeypatch.setattr(effects_module, "start_preflight", lambda argv, cwd: preflight)
    spawner = FakeSpawner()
    sup, _ = make(listener, spawner, upgrade_interval=0.0)
    feed(sup, act.Begin(sup.now()))
    run_until(sup, lambda: sup.rules.gens.current is not None, "generation 1 ready")
    logged: list[str] = []
    sup.effects.report.log = lambda line: logged.append(line.text())  # type: ignore[method-assign]
    feed(sup, act.SignalEvent(sup.now(), signal.SIGUSR2))
    assert logged[-1] == "re-exec (SIGUSR2): checking that the new program starts"
    feed(sup, act.SignalEvent(sup.now(), signal.SIGHUP))  # while the preflight runs
    run_until(sup, lambda: sup.rules.gens.current.number == 2, "generation 2 ready")
    preflight.returncode = 1
    run_until(sup, lambda: "serving on unchanged" in logged[-1], "the preflight's outcome")
    assert logged[-1] == (
        "re-exec refused: the new program failed: it exited with status 1; serving on unchanged"
    )
    feed(sup, act.SignalEvent(sup.now(), signal.SIGTERM))
    run_until(sup, lambda: sup.rules.finished, "the stop")


def test_run_serves_until_sigterm_and_cleans_up(listener):
    """The whole loop, signals included: HUP upgrades, TERM stops; handlers are restored."""
    spawner = FakeSpawner()
    sup, events = make(listener, spawner, upgrade_interval=0.0)
    before = signal.getsignal(signal.SIGHUP)
    result: list[int] = []

    def drive() -> None:
        deadline = time.monotonic() + 10
        while sup.rules.gens.current is None and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGHUP)
        while len(spawner.spawned) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)
        # The fake generations "exit" once drained, as the supervisor reaps them: SIGCHLD
        # stands for a real child's exit until the loop has ended.
        while not result and time.monotonic() < deadline:
            os.kill(os.getpid(), signal.SIGCHLD)
            time.sleep(0.02)

    thread = threading.Thread(target=drive)
    thread.start()
    result.append(sup.run())
    thread.join(10)
    assert result == [0]
    assert len(spawner.spawned) == 2
    assert signal.getsignal(signal.SIGHUP) == before
    assert events[-2:] == ["STOPPING=1", "STOPPING=1"]  # at the stop, and on the way out
    assert listener.fileno() == -1  # closed by the supervisor on its way out


def test_reporter_records_draining_generations_with_wall_clock_deadlines():
    events: list[str] = []
    reporter = Reporter(None, FakeNotifier(events))  # type: ignore[arg-type]
    state = FakeState(events)
    reporter.state = state  # type: ignore[assignment]
    now = time.monotonic()
    reporter.record_draining(act.RecordDraining((act.Draining(3, 42, now + 10, False),)), now)
    (entry,) = state.data["draining"]  # type: ignore[misc]
    assert entry["generation"] == 3 and entry["pid"] == 42 and not entry["cut"]
    assert entry["deadline"] == pytest.approx(time.time() + 10, abs=0.5)


def test_a_left_line_on_the_channel_reaches_the_state_file(listener):
    """``left N`` from a draining generation is recorded for ``status``; a line the
    supervisor does not know (a newer generation's) is ignored."""
    spawner = FakeSpawner()
    sup, _ = make(listener, spawner)
    feed(sup, act.Begin(sup.now()))
    run_until(sup, lambda: sup.rules.gens.current is not None, "generation 1 ready")
    first = spawner.spawned[0][3]
    first.poll = lambda: first.returncode  # type: ignore[method-assign]  # drains until told
    feed(sup, act.SignalEvent(sup.now(), signal.SIGHUP))
    run_until(sup, lambda: sup.rules.gens.draining, "generation 1 to drain")
    first.channel.sendall(b"left 2\nsomething new 5\nleft x\n")

    def recorded():
        return [g.get("left") for g in sup.effects.report.state.data.get("draining", [])]  # type: ignore[union-attr]

    run_until(sup, lambda: recorded() == [2], "the count in the state file")
    first.exit(0)
    run_until(sup, lambda: not sup.rules.gens.draining, "generation 1 to exit")
    assert recorded() == []
    feed(sup, act.SignalEvent(sup.now(), signal.SIGTERM))
    run_until(sup, lambda: sup.rules.finished, "the stop")
