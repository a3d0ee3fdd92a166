"""The supervisor: the process the user starts and signals, whose pid never changes.

It holds the listeners for its whole life and runs the app in child *generations*. Its loop
waits on one selector: the signal wakeup pipe (handlers record nothing themselves; Python writes
each signal's number to the pipe) and each generation's channel. The state is small:

* ``current``: the generation serving (or ``None`` while one is restarted);
* ``pending``: the generation being started by an upgrade, with a ready deadline;
* ``draining``: old generations finishing their requests, each with a kill deadline.

An upgrade starts only when no other is pending and nothing drains, so at most two generations
ever exist, and at most once per ``Options.upgrade_interval`` (a HUP storm or an editor's burst
of writes makes at most two upgrades); requests meanwhile are coalesced into one follow-up.
A pending generation that exits, closes its channel or misses its deadline is killed and
reaped, and the current one serves on untouched (a rollback). A current generation that dies
is restarted with back-off.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import subprocess
import time
from dataclasses import dataclass

from grace_plugins import channel as msg
from grace_plugins.channel import Channel
from grace_plugins.errors import ExitCode, GraceError
from grace_plugins.handoff import HANDOFF_VAR, Handoff
from grace_plugins.listeners import name_of, unlink_unix
from grace_plugins.log import configure
from grace_plugins.pidfile import remove_pidfile, write_pidfile
from grace_plugins.process import Spawner, program_argv, reap_orphans
from grace_plugins.reexec import (
    AdoptedProcess,
    SupervisorHandoff,
    exec_supervisor,
    preflight,
    release_held_signals,
)
from grace_plugins.sdnotify import NOTIFY_VAR, Notifier
from grace_plugins.state import StateFile

#: Extra time a draining generation gets past its own drain deadline before SIGKILL.
KILL_GRACE = 5.0
#: Restart delays for a generation that keeps dying; reset after a stable run.
BACKOFF = (0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
STABLE_AFTER = 30.0
_HANDLED = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGUSR2)


@dataclass
class Options:
    """Settings of the handover; every wait is bounded."""

    #: Seconds a new generation has to import the app and report ready before rollback.
    ready_timeout: float = 30.0
    #: Seconds an old generation has to finish its requests (as gunicorn's graceful_timeout).
    drain_timeout: float = 30.0
    #: During a drain, idle keep-alive connections are closed after this many seconds idle.
    keepalive_timeout: float = 5.0
    #: Upgrades start at most once per this many seconds; requests in between coalesce.
    upgrade_interval: float = 1.0
    pidfile: str | None = None


@dataclass
class Generation:
    """The supervisor's view of one child generation."""

    number: int
    process: subprocess.Popen[bytes] | AdoptedProcess
    channel: Channel
    started: float
    deadline: float
    ready_at: float | None = None
    draining: bool = False

    @property
    def pid(self) -> int:
        return self.process.pid

    def __str__(self) -> str:
        return f"generation {self.number} (pid {self.pid})"


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
    ) -> None:
        self.listeners = listeners
        self.options = options or Options()
        self.argv = argv or program_argv()
        self.cwd = os.getcwd()
        self.spawner = spawner or Spawner()
        self.notifier = notifier or Notifier()
        self.log = configure("supervisor")
        self.current: Generation | None = None
        self.pending: Generation | None = None
        self.draining: list[Generation] = []
        self.followup = False
        self.followup_at: float | None = None
        self.stopping = False
        self.stop_deadline: float | None = None
        self.restart_at: float | None = None
        self.failures = 0
        self.exit_code = ExitCode.OK
        self._counter = 0
        self._selector = selectors.DefaultSelector()
        self._upgrade_started = 0.0
        self.state: StateFile | None = None
        self.reexec_requested = False
        self._adopted = False

    def adopt(self, handoff: SupervisorHandoff) -> None:
        """Take over the generation a previous image of this supervisor ran (after USR2)."""
        channel = Channel.from_fd(handoff.channel_fd)
        channel.sock.setblocking(False)
        now = time.monotonic()
        self.current = Generation(
            handoff.generation, AdoptedProcess(handoff.generation_pid), channel, now, now
        )
        self.current.ready_at = now
        self._counter = handoff.counter
        self._adopted = True

    # -- the loop -------------------------------------------------------------------------------
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
            try:
                self.state = StateFile.resume() if self._adopted else StateFile()
                self.state.update(listeners=[name_of(s) for s in self.listeners])
            except GraceError as exc:
                self.log.error("no state file for grace-plugins reload/status: %s", exc)
            if self._adopted and self.current is not None:
                self._selector.register(
                    self.current.channel.sock, selectors.EVENT_READ, self.current
                )
                release_held_signals()
                self.log.info(
                    "supervisor re-executed (pid unchanged); adopted %s; upgrading it", self.current
                )
                self._record(generation=self.current.number, generation_pid=self.current.pid)
                self.request_upgrade("supervisor re-exec")
            else:
                self._start_generation("start")
            while self.current or self.pending or self.draining or not self.stopping:
                self._selector_wait()
                self._reap()
                self._check_deadlines()
                if self.exit_code != ExitCode.OK and not (self.current or self.pending):
                    break
        finally:
            # Normally none is left. After an unexpected error, closing a generation's channel
            # makes it drain and exit by itself: its in-flight requests still complete.
            for gen in [self.pending, self.current, *self.draining]:
                if gen is not None:
                    gen.channel.close()
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
            if self.state is not None:
                self.state.remove()
            self.notifier.stopping()
        self.log.info("stopped (exit status %d)", self.exit_code)
        return int(self.exit_code)

    def _selector_wait(self) -> None:
        timeout = self._next_deadline()
        for key, _ in self._selector.select(timeout):
            if key.data is None:
                self._drain_signals(key.fileobj)  # type: ignore[arg-type]
            else:
                self._on_channel(key.data)

    def _next_deadline(self) -> float | None:
        deadlines = [g.deadline for g in [self.pending, *self.draining] if g is not None]
        for moment in (self.restart_at, self.followup_at):
            if moment is not None:
                deadlines.append(moment)
        if self.stop_deadline is not None:
            deadlines.append(self.stop_deadline)
        if not deadlines:
            return 1.0  # also a safety net for a missed SIGCHLD
        return max(0.0, min(min(deadlines) - time.monotonic(), 1.0))

    def _drain_signals(self, fd: int) -> None:
        try:
            data = os.read(fd, 512)
        except BlockingIOError:
            return
        for signum in data:
            if signum == signal.SIGHUP:
                self.request_upgrade("SIGHUP")
            elif signum in (signal.SIGTERM, signal.SIGINT):
                self.stop(signal.Signals(signum).name)
            elif signum == signal.SIGUSR2:
                self.reexec_requested = True
                if self.pending or self.draining or self.current is None:
                    self.log.info("re-exec (SIGUSR2) deferred until the upgrade under way ends")
                self._maybe_reexec()

    def _on_channel(self, gen: Generation) -> None:
        lines = gen.channel.receive()
        if lines is None:
            self._selector.unregister(gen.channel.sock)
            return  # the process is exiting; _reap handles it
        for line in lines:
            if line == msg.READY:
                self._on_ready(gen)
            elif line == msg.UPGRADE:
                self.request_upgrade(f"requested by {gen}")

    # -- upgrades -------------------------------------------------------------------------------
    def request_upgrade(self, reason: str) -> None:
        """Start an upgrade now, or coalesce it into one follow-up if one is under way."""
        if self.stopping:
            self.log.info("upgrade (%s) ignored: stopping", reason)
            return
        too_soon = time.monotonic() < self._upgrade_started + self.options.upgrade_interval
        if self.pending or self.draining or (too_soon and self.current is not None):
            if not self.followup:
                busy = self.pending or (self.draining[0] if self.draining else None)
                if busy is None:
                    state = (
                        f"the last upgrade started less than {self.options.upgrade_interval:g}"
                        " s ago"
                    )
                else:
                    state = f"{busy} is still {'starting' if busy is self.pending else 'draining'}"
                self.log.info(
                    "upgrade (%s) queued: %s; one follow-up upgrade will run", reason, state
                )
            self.followup = True
            self._maybe_followup()
            return
        if self.current is None:
            self.restart_at = None  # a HUP while waiting to restart: try now
        self._start_generation(reason)

    def _start_generation(self, reason: str) -> None:
        self._counter += 1
        number = self._counter
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
        now = time.monotonic()
        try:
            process = self.spawner.spawn(self.argv, env, pass_fds, self.cwd)
        except OSError as exc:
            parent_end.close()
            self.log.error("cannot start generation %d: %s", number, exc)
            self._schedule_restart()
            return
        finally:
            child_end.close()  # or a child that dies never produces EOF
        parent_end.sock.setblocking(False)
        gen = Generation(number, process, parent_end, now, now + self.options.ready_timeout)
        self._selector.register(parent_end.sock, selectors.EVENT_READ, gen)
        self.pending = gen
        if self.current is not None:  # the interval paces upgrades, not starts and restarts
            self._upgrade_started = now
        if self.current is not None:
            self.log.info("upgrade started (%s): %s", reason, gen)
            self.notifier.reloading(f"upgrading to generation {number}")
            self._record(in_progress=True)
        else:
            self.log.info("starting %s (%s)", gen, reason)

    def _on_ready(self, gen: Generation) -> None:
        if gen is not self.pending:
            return
        now = time.monotonic()
        gen.ready_at = now
        old, self.current, self.pending = self.current, gen, None
        elapsed_ms = (now - gen.started) * 1000
        if old is None:
            self.log.info(
                "%s ready after %d ms; serving %s. Upgrade: kill -HUP %d. Stop: kill -TERM %d.",
                gen,
                elapsed_ms,
                ", ".join(name_of(s) for s in self.listeners),
                os.getpid(),
                os.getpid(),
            )
        else:
            self.log.info("%s ready after %d ms; %s drains", gen, elapsed_ms, old)
            self._retire(old)
        # systemd first: ``grace-plugins reload`` (ExecReload=) returns once the state file
        # says the upgrade is over, and systemd must not see it end before READY=1
        self.notifier.ready(f"serving with generation {gen.number} (pid {gen.pid})")
        if old is not None and self.state is not None:
            self.state.record_upgrade(
                "ok", f"{gen} ready after {elapsed_ms:.0f} ms", ready_ms=round(elapsed_ms)
            )
        self._record(generation=gen.number, generation_pid=gen.pid, generation_since=time.time())
        self._maybe_followup()

    def _record(self, **fields: object) -> None:
        if self.state is not None:
            self.state.update(**fields)

    def _retire(self, gen: Generation) -> None:
        gen.draining = True
        gen.deadline = time.monotonic() + self.options.drain_timeout + KILL_GRACE
        self.draining.append(gen)
        if not gen.channel.send(msg.DRAIN):
            self.spawner.signal_group(gen.process, signal.SIGTERM)

    def _rollback(self, gen: Generation, why: str) -> None:
        self.spawner.signal_group(gen.process, signal.SIGKILL)
        _wait(gen.process, 5.0)
        self._forget(gen)
        self.pending = None
        if self.stopping:
            return
        if self.current is not None:
            self.log.error(
                "upgrade rolled back: %s %s; %s keeps serving (its traceback, if any, is above)",
                gen,
                why,
                self.current,
            )
            self.notifier.ready(f"upgrade rolled back: generation {gen.number} {why}")
            if self.state is not None:
                self.state.record_upgrade("rolled_back", f"{gen} {why}")
        elif self._counter == 1:
            self.log.error(
                "the app failed to start: %s %s (its traceback, if any, is above)", gen, why
            )
            self.exit_code = ExitCode.APP_LOAD_ERROR
            self.stop("start-up failed")
            return
        else:
            self.log.error("restart failed: %s %s", gen, why)
            self._schedule_restart()
        self._maybe_followup()

    def _maybe_reexec(self) -> None:
        """Re-exec the supervisor (USR2) once no upgrade or drain is under way."""
        if not self.reexec_requested or self.stopping:
            return
        if self.pending or self.draining or self.current is None:
            return
        self.reexec_requested = False
        self.log.info("re-exec (SIGUSR2): checking that the new program starts")
        why = preflight(self.argv, self.cwd, self.options.ready_timeout)
        if why is None:
            gen = self.current
            handoff = SupervisorHandoff(
                listeners=[(name_of(s), s.fileno()) for s in self.listeners],
                generation=gen.number,
                generation_pid=gen.pid,
                channel_fd=gen.channel.fileno(),
                counter=self._counter,
            )
            self.log.info("re-executing the supervisor in place; %s keeps serving", gen)
            keep = [s.fileno() for s in self.listeners] + [gen.channel.fileno()]
            why = exec_supervisor(self.argv, handoff, keep)
        self.log.error("re-exec refused: the new program failed: %s; serving on unchanged", why)

    def _maybe_followup(self) -> None:
        """Start the coalesced follow-up once nothing is under way and the interval passed."""
        self._maybe_reexec()
        if not self.followup or self.pending or self.draining or self.stopping:
            self.followup_at = None
            return
        earliest = self._upgrade_started + self.options.upgrade_interval
        if time.monotonic() < earliest:
            self.followup_at = earliest
            return
        self.followup = False
        self.followup_at = None
        self._start_generation("queued follow-up")

    def _schedule_restart(self) -> None:
        if self.stopping:
            return
        delay = BACKOFF[min(self.failures, len(BACKOFF) - 1)]
        self.failures += 1
        self.restart_at = time.monotonic() + delay
        self.log.info("next start attempt in %.1f s (or at the next SIGHUP)", delay)

    # -- children -------------------------------------------------------------------------------
    def _reap(self) -> None:
        gens = [g for g in [self.pending, self.current, *self.draining] if g is not None]
        reap_orphans({g.pid for g in gens})
        for gen in [self.pending, self.current, *self.draining]:
            if gen is None or gen.process.poll() is None:
                continue
            status = _status(gen.process.returncode)
            if gen is self.pending:
                self._rollback(gen, f"exited ({status}) before it was ready")
            elif gen is self.current:
                self._forget(gen)
                self.current = None
                if self.stopping:
                    continue
                lived = time.monotonic() - (gen.ready_at or gen.started)
                if lived > STABLE_AFTER:
                    self.failures = 0
                self.log.error("%s exited unexpectedly (%s)", gen, status)
                if self.pending is None:
                    self._schedule_restart()
            else:
                self._forget(gen)
                self.draining.remove(gen)
                self.log.info("%s exited after draining (%s)", gen, status)
                self._maybe_followup()

    def _forget(self, gen: Generation) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(gen.channel.sock)
        gen.channel.close()

    def _check_deadlines(self) -> None:
        now = time.monotonic()
        if self.pending and now >= self.pending.deadline:
            self._rollback(self.pending, f"was not ready within {self.options.ready_timeout:g} s")
        for gen in list(self.draining):
            if now >= gen.deadline and gen.process.poll() is None:
                self.log.error("%s still running after its drain deadline: killed", gen)
                self.spawner.signal_group(gen.process, signal.SIGKILL)
                gen.deadline = now + 1.0
        if self.followup_at is not None and now >= self.followup_at:
            self._maybe_followup()
        if self.restart_at is not None and now >= self.restart_at:
            self.restart_at = None
            if self.current is None and self.pending is None and not self.stopping:
                self._start_generation("restart")
        if self.stop_deadline is not None and now >= self.stop_deadline:
            for gen in [self.current, self.pending, *self.draining]:
                if gen is not None:
                    self.spawner.signal_group(gen.process, signal.SIGKILL)
            self.stop_deadline = now + 1.0

    # -- stopping -------------------------------------------------------------------------------
    def stop(self, reason: str) -> None:
        """Graceful stop: drain every generation, then leave the loop. A second stop signal
        kills at once (as in gunicorn's quick shutdown)."""
        if self.stopping:
            if reason in ("SIGINT", "SIGTERM"):
                self.log.info("%s again: stopping now", reason)
                self.stop_deadline = time.monotonic()
            return
        self.stopping = True
        self.followup = False
        self.restart_at = None
        self.log.info("stopping (%s): draining", reason)
        self.notifier.stopping()
        if self.pending is not None:
            self.spawner.signal_group(self.pending.process, signal.SIGKILL)
        if self.current is not None:
            self._retire(self.current)
            self.current = None
        self.stop_deadline = time.monotonic() + self.options.drain_timeout + KILL_GRACE


def _wake(signum: int, frame: object) -> None:
    """Signal handler: nothing to do, the wakeup fd carries the signal number to the loop."""


def _wait(process: subprocess.Popen[bytes], timeout: float) -> None:
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout)


def _status(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"
