"""The supervisor: the process the user starts and signals, whose pid never changes.

It holds the listeners for its whole life and runs the app in child *generations*. What to do
is decided by :class:`grace_plugins.rules.Rules` (a pure state machine: coalescing, pacing,
rollback, back-off, the drain limit, stopping); this module is the loop that feeds it events
and carries out its actions. The loop waits on one selector: the signal wakeup pipe (handlers
record nothing themselves; Python writes each signal's number to the pipe) and each
generation's channel. After each wake-up it reaps exited generations and checks deadlines.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

from grace_plugins import actions as act
from grace_plugins import channel as msg
from grace_plugins.channel import Channel
from grace_plugins.handoff import HANDOFF_VAR, Handoff
from grace_plugins.listeners import name_of, unlink_unix
from grace_plugins.log import configure
from grace_plugins.options import Options
from grace_plugins.pidfile import remove_pidfile, write_pidfile
from grace_plugins.process import ChildProcess, Spawner, program_argv, reap_orphans
from grace_plugins.reexec import (
    SupervisorHandoff,
    exec_supervisor,
    preflight,
    release_held_signals,
)
from grace_plugins.reporting import Reporter
from grace_plugins.rules import BACKOFF, KILL_GRACE, STABLE_AFTER, Rules
from grace_plugins.sdnotify import NOTIFY_VAR, Notifier

__all__ = ["BACKOFF", "KILL_GRACE", "STABLE_AFTER", "Options", "Supervisor"]

_HANDLED = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGUSR2)


@dataclass
class Child:
    """A generation's process and channel: what the effects need, beside the rules' view."""

    process: subprocess.Popen[bytes]
    channel: Channel


class Supervisor:
    """Runs generations of one program over a fixed set of listeners."""

    def __init__(
        self,
        listeners: list[socket.socket],
        options: Options | None = None,
        *,
        argv: list[str] | None = None,
        spawner: Spawner | None = None,
        notifier: Notifier | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.listeners = listeners
        self.options = options or Options()
        self.argv = argv or program_argv()
        self.cwd = os.getcwd()
        self.spawner = spawner or Spawner()
        self.log = configure("supervisor")
        self.report = Reporter(self.log, notifier or Notifier())
        self.rules = Rules(self.options, [name_of(s) for s in listeners], os.getpid())
        self.children: dict[int, Child] = {}
        self._clock = clock or time.monotonic
        self._selector = selectors.DefaultSelector()

    @property
    def exit_code(self) -> int:
        return int(self.rules.exit_code)

    def now(self) -> float:
        return self._clock()

    def adopt(self, handoff: SupervisorHandoff) -> None:
        """Take over the generation a previous image of this supervisor ran (after USR2)."""
        channel = Channel.from_fd(handoff.channel_fd)
        channel.sock.setblocking(False)
        self.children[handoff.generation] = Child(ChildProcess(handoff.generation_pid), channel)
        self.rules.adopt(handoff.generation, handoff.generation_pid, handoff.counter, self.now())

    # -- the loop ---------------------------------------------------------------------------------
    def run(self) -> int:
        """Serve until stopped by SIGTERM/SIGINT; return the exit status. Blocks."""
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        previous_wakeup = signal.set_wakeup_fd(wake_w)
        previous = {sig: signal.signal(sig, _wake) for sig in _HANDLED}
        self._selector.register(wake_r, selectors.EVENT_READ, None)
        try:
            if self.options.pidfile:
                write_pidfile(self.options.pidfile)
            self.report.open_state(self.rules.adopted, self.rules.listeners)
            for number, child in self.children.items():  # adopted after a re-exec
                self._selector.register(child.channel.sock, selectors.EVENT_READ, number)
            if self.rules.adopted:
                release_held_signals()
            self.feed(act.Begin(self.now()))
            while not self.rules.finished:
                self.step()
        finally:
            # Normally none is left. After an unexpected error, closing a generation's channel
            # makes it drain and exit by itself: its in-flight requests still complete.
            for child in self.children.values():
                child.channel.close()
            signal.set_wakeup_fd(previous_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._selector.close()
            os.close(wake_r)
            os.close(wake_w)
            for sock in self.listeners:
                unlink_unix(sock)
                sock.close()
            if self.options.pidfile:
                remove_pidfile(self.options.pidfile)
            self.report.close()
        self.log.info("stopped (exit status %d)", self.exit_code)
        return self.exit_code

    def step(self) -> None:
        """One turn: wait for a signal, a message or a deadline; reap; check the deadlines."""
        for key, _ in self._selector.select(self.rules.timeout(self.now())):
            if key.data is None:
                self._read_signals(key.fd)
            else:
                self._read_channel(key.data)
        self.reap()
        self.feed(act.Tick(self.now()))

    def feed(self, event: act.Event) -> None:
        """Hand *event* to the rules and carry out what they decide."""
        for action in self.rules.handle(event):
            self.execute(action)

    def _read_signals(self, fd: int) -> None:
        try:
            data = os.read(fd, 512)
        except BlockingIOError:
            return
        for signum in data:
            if signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGUSR2):
                self.feed(act.SignalEvent(self.now(), signum))

    def _read_channel(self, number: int) -> None:
        child = self.children.get(number)
        lines = None if child is None else child.channel.receive()
        if lines is None:
            self.feed(act.ChannelClosed(self.now(), number))
            return  # the process is exiting; reap() hears of it
        for line in lines:
            if line == msg.READY:
                self.feed(act.Ready(self.now(), number))
            elif line == msg.UPGRADE:
                self.feed(act.UpgradeAsked(self.now(), number))
            elif (count := msg.parse_left(line)) is not None:
                self.feed(act.ConnectionsLeft(self.now(), number, count))

    def reap(self) -> None:
        """Tell the rules of every generation that exited (never ``waitpid(-1)``)."""
        gens = self.rules.generations()
        reap_orphans({g.pid for g in gens})
        for gen in gens:
            child = self.children.get(gen.number)
            returncode = None if child is None else child.process.poll()
            if returncode is not None:
                self.feed(act.Exited(self.now(), gen.number, returncode))

    # -- effects ----------------------------------------------------------------------------------
    def execute(self, action: act.Action) -> None:
        """Carry out one action (a :class:`~grace_plugins.actions.Spawn` or
        :class:`~grace_plugins.actions.Reexec` feeds its outcome back to the rules)."""
        if isinstance(action, act.Log):
            self.report.log(action)
        elif isinstance(action, act.Spawn):
            self._spawn(action.number)
        elif isinstance(action, act.Drain):
            child = self.children.get(action.number)
            if child is not None and not child.channel.send(msg.DRAIN):
                self.spawner.signal_group(child.process, signal.SIGTERM)
        elif isinstance(action, act.Kill):
            self._kill(action.number, action.wait)
        elif isinstance(action, act.Forget):
            child = self.children.pop(action.number, None)
            if child is not None:
                self._unwatch(child)
                child.channel.close()
        elif isinstance(action, act.Unwatch):
            if action.number in self.children:
                self._unwatch(self.children[action.number])
        elif isinstance(action, act.Notify):
            self.report.notify(action)
        elif isinstance(action, act.Serving):
            self.report.serving(action)
        elif isinstance(action, act.Record):
            self.report.record(action.fields)
        elif isinstance(action, act.RecordDraining):
            self.report.record_draining(action, self.now())
        elif isinstance(action, act.Reexec):
            self._reexec()

    def _spawn(self, number: int) -> None:
        parent_end, child_end = Channel.pair()
        handoff = Handoff(
            supervisor_pid=os.getpid(),
            generation=number,
            listeners=[(name_of(s), s.fileno()) for s in self.listeners],
            channel_fd=child_end.fileno(),
            ready_timeout=self.options.ready_timeout,
            drain_timeout=self.options.drain_timeout,
            keepalive_timeout=self.options.keepalive_timeout,
        )
        env = dict(os.environ)
        env.pop(NOTIFY_VAR, None)  # systemd hears the supervisor (the main pid) only
        env[HANDOFF_VAR] = handoff.encode()
        pass_fds = [s.fileno() for s in self.listeners] + [child_end.fileno()]
        try:
            process = self.spawner.spawn(self.argv, env, pass_fds, self.cwd)
        except OSError as exc:
            parent_end.close()
            self.feed(act.SpawnFailed(self.now(), number, str(exc)))
            return
        finally:
            child_end.close()  # or a child that dies never produces EOF
        parent_end.sock.setblocking(False)
        self.children[number] = Child(process, parent_end)
        self._selector.register(parent_end.sock, selectors.EVENT_READ, number)
        self.feed(act.Spawned(self.now(), number, process.pid))

    def _kill(self, number: int, wait: bool) -> None:
        child = self.children.get(number)
        if child is None:
            return
        self.spawner.signal_group(child.process, signal.SIGKILL)
        if wait:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.process.wait(5.0)

    def _unwatch(self, child: Child) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(child.channel.sock)

    def _reexec(self) -> None:
        """Preflight the new program, then exec it in place; returns only if refused."""
        gen = self.rules.current
        why = preflight(self.argv, self.cwd, self.options.ready_timeout)
        if why is None and gen is not None:
            channel = self.children[gen.number].channel
            handoff = SupervisorHandoff(
                listeners=[(name_of(s), s.fileno()) for s in self.listeners],
                generation=gen.number,
                generation_pid=gen.pid,
                channel_fd=channel.fileno(),
                counter=self.rules.counter,
            )
            self.log.info("re-executing the supervisor in place; %s keeps serving", gen)
            keep = [s.fileno() for s in self.listeners] + [channel.fileno()]
            why = exec_supervisor(self.argv, handoff, keep)
        self.feed(act.ReexecRefused(self.now(), why or "no generation serves"))


def _wake(signum: int, frame: object) -> None:
    """Signal handler: nothing to do, the wakeup fd carries the signal number to the loop."""
