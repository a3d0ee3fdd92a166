"""What the supervisor's actions do to the world: processes, channels, signals, reports.

:class:`Effects` carries out the actions of :mod:`grace_plugins.rules` for the loop in
:mod:`grace_plugins.supervisor`. It owns the handles the rules do not see: each generation's
process and channel, the preflight run, the spawner. It decides nothing: what it finds out
(a spawn's outcome, a re-exec that failed) is returned to the loop as events.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from grace_plugins import actions as act
from grace_plugins import channel as msg
from grace_plugins.channel import Channel
from grace_plugins.cmdline import interpreter, working_dir
from grace_plugins.handoff import HANDOFF_VAR, Handoff
from grace_plugins.listeners import name_of
from grace_plugins.options import Options
from grace_plugins.process import Outcome, Spawner, SpawnRequest, Started
from grace_plugins.reexec import (
    SupervisorHandoff,
    exec_supervisor,
    preflight_failure,
    start_preflight,
)
from grace_plugins.reporting import Reporter
from grace_plugins.sdnotify import NOTIFY_VAR
from grace_plugins.watcher import Watcher

#: Longest wait for a killed process to be reaped (``Kill(wait=True)``, the preflight run).
REAP_WAIT = 5.0


@dataclass
class Child:
    """A generation's process and channel: what the effects need, beside the rules' view."""

    process: subprocess.Popen[bytes]
    channel: Channel


class Effects:
    """Carries out actions; holds the generations' processes and channels."""

    def __init__(
        self,
        listeners: list[socket.socket],
        options: Options,
        argv: list[str],
        spawner: Spawner,
        report: Reporter,
        log: logging.Logger,
        *,
        wake_fd: int = -1,
        banner: str = "",
        watcher: Watcher | None = None,
        generation_env: Mapping[str, str] | None = None,
    ) -> None:
        self.listeners = listeners
        self.options = options
        self.argv = argv
        self.cwd = working_dir()  # symlinks kept: a switched release is the one started
        interpreter()  # read while this directory exists (a deploy may delete it later)
        self.spawner = spawner
        self.report = report
        self.log = log
        self.children: dict[int, Child] = {}
        self.wake_fd = wake_fd  # the loop's signal wakeup pipe, read before an exec
        self.banner = banner  # the adapter's start-up lines, once the first generation serves
        self.watcher = watcher
        self.generation_env = dict(generation_env or {})  # each generation's, not ours
        #: spawns whose outcome comes later: (our end, the generation's end) of the channel
        self._starting: dict[int, tuple[Channel, socket.socket]] = {}
        self._preflight: subprocess.Popen[bytes] | None = None

    # -- generations ------------------------------------------------------------------------------
    def adopt(self, number: int, process: subprocess.Popen[bytes], channel_fd: int) -> Child:
        """A generation inherited from the previous image of the supervisor (USR2)."""
        channel = Channel.from_fd(channel_fd)
        channel.sock.setblocking(False)
        self.children[number] = Child(process, channel)
        return self.children[number]

    def spawn(self, action: act.Spawn, now: float) -> list[Outcome]:
        """Start generation ``action.number`` with exactly the listeners and a new channel
        inherited; the outcome now, or later from the spawner's sources."""
        parent_end, child_end = Channel.pair()
        handoff = Handoff(
            supervisor_pid=os.getpid(),
            generation=action.number,
            listeners=[(name_of(s), s.fileno()) for s in self.listeners],
            channel_fd=child_end.fileno(),
            options=self.options,
        )
        env = {**os.environ, **self.generation_env, "PWD": self.cwd}
        env.pop(NOTIFY_VAR, None)  # systemd hears the supervisor (the main pid) only
        env[HANDOFF_VAR] = handoff.encode()
        pass_fds = [s.fileno() for s in self.listeners] + [child_end.fileno()]
        request = SpawnRequest(action.number, self.argv, env, pass_fds, self.cwd, action.cold)
        # The generation's end stays open until the outcome: a warm spawn that falls back to
        # a cold start later passes it again.
        self._starting[action.number] = (parent_end, child_end)
        try:
            started = self.spawner.spawn(request)
        except OSError as exc:
            self.spawn_failed(action.number)
            return [act.SpawnFailed(now, action.number, str(exc))]
        return [] if started is None else [started]

    def started(self, outcome: Started) -> Child | None:
        """A spawn completed: keep its process with the channel made for it. A spawn given up
        meanwhile (its generation forgotten) is killed: ``None``."""
        ends = self._starting.pop(outcome.number, None)
        if ends is None:
            self.spawner.signal_group(outcome.process, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                outcome.process.wait(REAP_WAIT)
            return None
        channel, child_end = ends
        child_end.close()  # or a generation that dies never produces end of file
        channel.sock.setblocking(False)
        self.children[outcome.number] = Child(outcome.process, channel)
        return self.children[outcome.number]

    def start_again_cold(self, number: int, now: float) -> list[Outcome]:
        """The warm attempt at *number* was given up: a cold start, through a new channel
        (the given-up one is closed: a late fork of it leaves)."""
        if number not in self._starting:
            return []  # given up altogether meanwhile
        self.spawn_failed(number)
        return self.spawn(act.Spawn(number, cold=True), now)

    def spawn_failed(self, number: int) -> None:
        for end in self._starting.pop(number, ()):
            end.close()

    def _give_up(self, number: int) -> None:
        """A spawn whose outcome had not come is given up: the spawner must not start it
        later with the channel end closed here."""
        if number in self._starting:
            self.spawner.cancel(number)
        self.spawn_failed(number)

    def forget(self, number: int) -> None:
        """The generation is gone (or given up before its spawn completed): close its
        channel (the loop stopped watching it)."""
        self._give_up(number)
        child = self.children.pop(number, None)
        if child is not None:
            child.channel.close()

    # -- everything else --------------------------------------------------------------------------
    def execute(self, action: act.Action, now: float) -> list[act.Event]:
        """Carry out *action*; return the events it produced."""
        if isinstance(action, act.Log):
            self.report.log(action)
        elif isinstance(action, act.Drain):
            child = self.children.get(action.number)
            if child is not None and not child.channel.send(msg.DRAIN):
                self.spawner.signal_group(child.process, signal.SIGTERM)
        elif isinstance(action, act.Kill):
            self._kill(action.number, action.wait)
        elif isinstance(action, act.Notify):
            self.report.notify(action)
        elif isinstance(action, act.Serving):
            if self.banner and action.outcome is None:
                print(self.banner, file=sys.stderr, flush=True)
                self.banner = ""
            self.report.serving(action)
        elif isinstance(action, act.Record):
            self.report.record(action.fields)
        elif isinstance(action, act.RecordDraining):
            self.report.record_draining(action, now)
        elif isinstance(action, act.Watch):
            if self.watcher is not None:
                self.watcher.watch(action.spec)
                files, globs = len(action.spec.files), len(action.spec.dirs)
                self.log.info("watching %d files and %d globs: %s", files, globs, action.what)
        elif isinstance(action, act.Refresh):
            self.spawner.refresh()
        elif isinstance(action, act.DropTemplate):
            self.spawner.drop(action.why)
        elif isinstance(action, act.Preflight):
            return self._start_preflight(now)
        elif isinstance(action, act.StopPreflight):
            self._stop_preflight()
        elif isinstance(action, act.Reexec):
            return [act.ReexecRefused(now, self._reexec(action))]
        return []

    def _kill(self, number: int, wait: bool) -> None:
        child = self.children.get(number)
        if child is None:
            return
        self.spawner.signal_group(child.process, signal.SIGKILL)
        if wait:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.process.wait(REAP_WAIT)

    def _start_preflight(self, now: float) -> list[act.Event]:
        try:
            self._preflight = start_preflight(self.argv, self.cwd)
        except OSError as exc:
            return [act.PreflightDone(now, f"it could not be started ({exc.strerror})")]
        return []

    def preflight_outcome(self) -> str | None:
        """After a SIGCHLD: ``None`` while no preflight run ended, ``""`` if it passed, else
        why it failed."""
        if self._preflight is None or self._preflight.poll() is None:
            return None
        returncode, self._preflight = self._preflight.returncode, None
        return preflight_failure(returncode) or ""

    def _stop_preflight(self) -> None:
        process, self._preflight = self._preflight, None
        if process is not None and process.poll() is None:
            self.spawner.signal_group(process, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(REAP_WAIT)

    def _reexec(self, action: act.Reexec) -> str:
        """Exec the new program in place, keeping the listeners and the serving generation;
        returns only if ``exec`` failed (why)."""
        child = self.children.get(action.number)
        if child is None:
            return "no generation serves"
        handoff = SupervisorHandoff(
            listeners=[(name_of(s), s.fileno()) for s in self.listeners],
            generation=action.number,
            generation_pid=action.pid,
            channel_fd=child.channel.fileno(),
            counter=action.counter,
            options=self.options,  # the next image keeps its pidfile
        )
        self.log.info(
            "re-executing the supervisor in place; generation %d (pid %d) keeps serving",
            action.number,
            action.pid,
        )
        return exec_supervisor(self.argv, handoff, self.cwd, self.wake_fd)

    def own_pids(self) -> Iterable[int]:
        """Every process of ours that is not an orphan to reap blindly."""
        pids = {child.process.pid for child in self.children.values()} | self.spawner.pids()
        if self._preflight is not None:
            pids.add(self._preflight.pid)
        return pids

    def close(self) -> None:
        """The loop ended: close the channels (a generation left alone drains and exits by
        itself), stop the preflight run and the spawner's processes."""
        for child in self.children.values():
            child.channel.close()
        for number in list(self._starting):
            self.spawn_failed(number)
        self._stop_preflight()
        self.spawner.close()
        if self.watcher is not None:
            self.watcher.close()
