"""The supervisor: the process the user starts and signals, whose pid never changes.

It holds the listeners for its whole life and runs the app in child *generations*. What to do
is decided by :class:`grace_plugins.rules.Rules` (a pure state machine); this module is the
loop that feeds it events and carries out its actions. Read top to bottom, :meth:`Supervisor.run`
shows every way the process can be woken, each a source of the one selector:

* the signal wakeup pipe (handlers do nothing; Python writes each signal's number there):
  HUP, TERM, INT and USR2 become events; SIGCHLD means reaping, whose findings (a generation,
  the preflight run or a template exited) become events;
* each generation's channel: ``ready``, ``upgrade``, ``left N``, ``watch SPEC``, end of file;
* the file watcher (with the reloader on): a save is over;
* the spawner's own sockets (the warm-start template's answers);
* the deadlines of the rules and of the spawner: the select timeout, then a ``Tick``.

Events go to one queue; :meth:`Supervisor.dispatch` hands each to the rules and carries out
the actions they return (:mod:`grace_plugins.effects`); an action's outcome is one more event on
the queue, never a call back into the rules. Nothing slow runs in the loop: a warm fork is
answered later on the template's socket, the USR2 preflight is a child process watched like the
others.
"""

from __future__ import annotations

import collections
import contextlib
import os
import selectors
import signal
import socket
import time
from collections.abc import Callable, Mapping

from grace_plugins import actions as act
from grace_plugins import channel as msg
from grace_plugins.cmdline import program_argv
from grace_plugins.effects import Child, Effects
from grace_plugins.errors import GraceError
from grace_plugins.listeners import name_of, unlink_unix
from grace_plugins.log import configure
from grace_plugins.options import Options
from grace_plugins.pidfile import remove_pidfile, write_pidfile
from grace_plugins.process import ChildProcess, Outcome, Spawner, StartAgainCold, reap_orphans
from grace_plugins.reexec import SupervisorHandoff, release_held_signals
from grace_plugins.reporting import Reporter
from grace_plugins.rules import BACKOFF, KILL_GRACE, STABLE_AFTER, Rules
from grace_plugins.sdnotify import Notifier
from grace_plugins.watcher import Watcher
from grace_plugins.watchspec import SpecError, WatchSpec

__all__ = ["BACKOFF", "KILL_GRACE", "STABLE_AFTER", "Options", "Supervisor"]

_HANDLED = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGUSR2)
_ASKED = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGUSR2)
#: The channel's one-word lines and the events they are (the others carry a value).
_SAID: dict[str, type[act.Ready] | type[act.UpgradeAsked] | type[act.StoppedAccepting]] = {
    msg.READY: act.Ready,
    msg.UPGRADE: act.UpgradeAsked,
    msg.STOPPED: act.StoppedAccepting,
}
Reader = Callable[[], list[act.Event]]


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
        banner: str = "",
        watcher: Watcher | None = None,
        generation_env: Mapping[str, str] | None = None,
    ) -> None:
        """:param banner: the adapter's start-up lines, printed once the first generation serves.
        :param watcher: the file watcher (reloader on); a save starts an upgrade as a HUP does.
        :param generation_env: variables set in each generation's environment only."""
        self.listeners = listeners
        self.options = options or Options()
        self.log = configure("supervisor")
        self.rules = Rules(self.options, [name_of(s) for s in listeners], os.getpid())
        self.spawner = spawner or Spawner()
        self._clock = clock or time.monotonic
        self._selector = selectors.DefaultSelector()
        self._queue: collections.deque[act.Event] = collections.deque()
        self.wake_r, self.wake_w = os.pipe()  # Python writes each signal's number (see run)
        for fd in (self.wake_r, self.wake_w):
            os.set_blocking(fd, False)
        self._selector.register(self.wake_r, selectors.EVENT_READ, self._read_signals)
        self.watcher = watcher
        if watcher is not None:
            self._selector.register(watcher.fileno(), selectors.EVENT_READ, self._read_watcher)
        self.effects = Effects(
            listeners,
            self.options,
            argv or program_argv(),
            self.spawner,
            Reporter(self.log, notifier or Notifier()),
            self.log,
            wake_fd=self.wake_r,
            banner=banner,
            watcher=watcher,
            generation_env=generation_env,
        )
        self.spawner.attach(self._add_spawner_source, self._remove_source)

    @property
    def children(self) -> dict[int, Child]:
        return self.effects.children

    @property
    def exit_code(self) -> int:
        return int(self.rules.exit_code)

    def now(self) -> float:
        return self._clock()

    def adopt(self, handoff: SupervisorHandoff) -> None:
        """Take over the generation a previous image of this supervisor ran (after USR2)."""
        process = ChildProcess(handoff.generation_pid)
        child = self.effects.adopt(handoff.generation, process, handoff.channel_fd)
        self._watch_channel(handoff.generation, child)
        self.rules.adopt(handoff.generation, handoff.generation_pid, handoff.counter, self.now())

    # -- the loop ---------------------------------------------------------------------------------
    def _write_pidfile(self, path: str) -> None:
        """Write it; a USR2 image that cannot serves on (its directory went with a release)."""
        try:
            write_pidfile(path)
        except GraceError as exc:
            if not self.rules.adopted:
                raise
            self.log.error("%s Serving on without it.", exc)

    def run(self) -> int:
        """Serve until stopped by SIGTERM/SIGINT; return the exit status. Blocks."""
        previous_wakeup = signal.set_wakeup_fd(self.wake_w)
        previous = {sig: signal.signal(sig, _wake) for sig in _HANDLED}
        try:
            if self.options.pidfile:
                self._write_pidfile(self.options.pidfile)
            self.effects.report.open_state(self.rules.adopted, self.rules.listeners)
            release_held_signals()  # held across the exec that made this image, if one did
            self._queue.append(act.Begin(self.now()))
            self._queue.extend(self._reap())  # an adopted generation may have exited already
            while True:
                self.dispatch()
                if self.rules.finished:
                    break
                self.wait()
        finally:
            signal.set_wakeup_fd(previous_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.close()
            for sock in self.listeners:
                unlink_unix(sock)
                sock.close()
            if self.options.pidfile:
                remove_pidfile(self.options.pidfile)
            self.effects.report.close()
        if self.rules.served:  # a failed first start said it all in one line
            self.log.info("stopped (exit status %d)", self.exit_code)
        return self.exit_code

    def close(self) -> None:
        """Release the loop's own resources: the effects' processes and channels (normally
        none is left: after an unexpected error, a generation whose channel closes drains and
        exits by itself, its in-flight requests complete), the selector, the wakeup pipe."""
        self.effects.close()
        self._selector.close()
        for fd in (self.wake_r, self.wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def post(self, event: act.Event) -> None:
        """Queue *event* for :meth:`dispatch` (as the loop's sources do)."""
        self._queue.append(event)

    def wait(self) -> None:
        """Wait for a signal, a message, a spawner's answer or a deadline; queue what came,
        then a ``Tick``."""
        now = self.now()
        timeout = self.rules.timeout(now)
        spawner_deadline = self.spawner.deadline()
        if spawner_deadline is not None:
            timeout = min(timeout, max(0.0, spawner_deadline - time.monotonic()))
        ready = self._selector.select(timeout)
        for key, _ in ready:
            self._queue.extend(key.data())
        if not ready:  # a quiet second: look for exits a lost SIGCHLD would have announced
            self._queue.extend(self._reap())
        self._queue.extend(self._outcomes(self.spawner.expire(time.monotonic())))
        self._queue.append(act.Tick(self.now()))

    def dispatch(self) -> None:
        """Hand every queued event to the rules, in order, and carry out their actions; an
        action's outcome joins the queue."""
        while self._queue:
            event = self._queue.popleft()
            for action in self.rules.handle(event):
                self._queue.extend(self.execute(action))

    def execute(self, action: act.Action) -> list[act.Event]:
        """Carry out one action; return the events it produced (a spawn's outcome...)."""
        if isinstance(action, act.Spawn):
            return self._outcomes(self.effects.spawn(action, self.now()))
        if isinstance(action, (act.Forget, act.Unwatch)):
            child = self.children.get(action.number)
            if child is not None:
                self._remove_source(child.channel.sock)
            if isinstance(action, act.Forget):
                self.effects.forget(action.number)
            return []
        return self.effects.execute(action, self.now())

    # -- sources: readiness becomes events --------------------------------------------------------
    def _read_signals(self) -> list[act.Event]:
        try:
            data = os.read(self.wake_r, 512)
        except BlockingIOError:
            return []
        now = self.now()
        events: list[act.Event] = [act.SignalEvent(now, n) for n in data if n in _ASKED]
        if signal.SIGCHLD in data:
            events += self._reap()
        return events

    def _reap(self) -> list[act.Event]:
        """Who exited: generations (by pid, never ``waitpid(-1)``), the preflight run, the
        spawner's own processes; then orphans re-parented to us."""
        now = self.now()
        events: list[act.Event] = []
        for number, child in list(self.children.items()):
            returncode = child.process.poll()
            if returncode is not None:  # what it said last (a failed one: what it tried) first
                events += self._read_rest(number, child) + [act.Exited(now, number, returncode)]
        why = self.effects.preflight_outcome()
        if why is not None:
            events.append(act.PreflightDone(now, why or None))
        events += self._outcomes(self.spawner.reap())
        reap_orphans(self.effects.own_pids())
        return events

    def _read_channel(self, number: int, child: Child) -> list[act.Event]:
        lines = child.channel.receive()
        if lines is None:  # the process is exiting; reaping tells
            return [act.ChannelClosed(self.now(), number)]
        return self._events(number, lines)

    def _events(self, number: int, lines: list[str]) -> list[act.Event]:
        now = self.now()
        events: list[act.Event] = []
        for line in lines:
            if (said := _SAID.get(line)) is not None:
                events.append(said(now, number))
            elif (count := msg.parse_left(line)) is not None:
                events.append(act.ConnectionsLeft(now, number, count))
            elif (encoded := msg.parse_watch(line)) is not None:
                events.append(_watch_report(now, number, encoded))
        return events

    def _read_rest(self, number: int, child: Child) -> list[act.Event]:
        """What an exited generation's channel still holds (a failed one: what it tried)."""
        lines, _ = child.channel.receive_rest()
        return self._events(number, lines)

    def _read_watcher(self) -> list[act.Event]:
        assert self.watcher is not None
        batch = self.watcher.take()
        return [act.FilesChanged(self.now(), batch.paths, batch.first)] if batch else []

    def _outcomes(self, outcomes: list[Outcome]) -> list[act.Event]:
        """A spawn's outcomes as events: a started generation's channel becomes a source."""
        events: list[act.Event] = []
        for outcome in outcomes:
            if isinstance(outcome, StartAgainCold):
                events += self._outcomes(self.effects.start_again_cold(outcome.number, self.now()))
                continue
            if isinstance(outcome, act.SpawnFailed):
                self.effects.spawn_failed(outcome.number)
                events.append(outcome)
                continue
            child = self.effects.started(outcome)
            if child is None:
                continue  # given up meanwhile: killed
            self._watch_channel(outcome.number, child)
            pid = outcome.process.pid
            events.append(act.Spawned(self.now(), outcome.number, pid, outcome.warm))
            if child.process.poll() is not None:  # gone before its pid reached us: its
                # SIGCHLD came while it was an orphan to us, and was spent on reaping it
                events += self._read_rest(outcome.number, child)
                events.append(act.Exited(self.now(), outcome.number, child.process.returncode))
        return events

    def _watch_channel(self, number: int, child: Child) -> None:
        self._selector.register(
            child.channel.sock, selectors.EVENT_READ, lambda: self._read_channel(number, child)
        )

    def _add_spawner_source(self, fileobj: object, reader: Callable[[], list[Outcome]]) -> None:
        self._selector.register(fileobj, selectors.EVENT_READ, lambda: self._outcomes(reader()))  # type: ignore[arg-type]

    def _remove_source(self, fileobj: object) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(fileobj)  # type: ignore[arg-type]


def _watch_report(now: float, number: int, encoded: str) -> act.WatchReport:
    try:
        return act.WatchReport(now, number, WatchSpec.decode(encoded))
    except SpecError as exc:
        return act.WatchReport(now, number, None, str(exc))


def _wake(signum: int, frame: object) -> None:
    """Signal handler: nothing to do, the wakeup fd carries the signal number to the loop."""
