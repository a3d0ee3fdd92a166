"""The narrow seam between the supervisor and the operating system's processes.

Everything the supervisor does to a process goes through :class:`Spawner`, so its state machine
can be driven by tests, and so the traps live in one place:

* the next generation re-runs exactly the program the user started (``sys.orig_argv``: console
  scripts, ``python -m``, ``python -c`` and interpreter flags), with a script path made absolute;
* it inherits only the fds named in ``pass_fds`` (``close_fds=True``), never the supervisor's
  log files or database connections;
* SIGHUP is blocked while it starts (the mask survives ``exec``): a HUP that arrives while the
  new generation imports the app stays pending until the generation has installed its handler,
  instead of killing it with the default action;
* it runs in a session of its own, so a terminal's Ctrl-C or hang-up reaches only the
  supervisor, which then decides (drain, or one upgrade) for every generation.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from grace_plugins import actions as act
from grace_plugins.cmdline import pinned

_subreaper = False
_PR_SET_CHILD_SUBREAPER = 36
#: Exit statuses of the orphans :func:`reap_orphans` reaped lately, by pid (the latest
#: few). A generation the template forks can exit before the template's answer names it to
#: us: reaped then as an orphan, its handle finds its status here instead of losing it.
_orphan_statuses: dict[int, int] = {}
_ORPHAN_STATUSES_KEPT = 64


class ChildProcess(subprocess.Popen[bytes]):
    """A child of this process known only by its pid: a generation forked by the warm-start
    template and re-parented to us (a child subreaper), or one inherited across a USR2 exec.
    The same face as a ``Popen`` (``pid``, ``poll``, ``wait``, ``returncode``,
    ``send_signal``), reaped by its pid with ``waitpid`` (never ``waitpid(-1)``, which would
    steal other children's statuses), its status converted as ``Popen`` does (``-N`` for
    signal N)."""

    def __init__(self, pid: int) -> None:
        # No Popen.__init__: the process exists already. Set what Popen's methods read.
        self.args = [f"<pid {pid}>"]
        self.pid = pid
        self.returncode: int | None = None
        self.stdin = self.stdout = self.stderr = None
        self._child_created = False  # Popen.__del__ leaves us alone

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped as an orphan (before we knew it), or lost
                self.returncode = _orphan_statuses.pop(self.pid, 0)
                return self.returncode
            if pid == self.pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
            time.sleep(0.005)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def __repr__(self) -> str:
        return f"<ChildProcess pid={self.pid} returncode={self.returncode}>"


def become_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants (Linux), so that a generation
    the template double-forks becomes our child. Returns whether it worked."""
    global _subreaper
    if _subreaper:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        _subreaper = libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False
    return _subreaper


@dataclass(frozen=True)
class SpawnRequest:
    """What a generation is started with: exactly these fds inherited (``pass_fds``)."""

    number: int
    argv: list[str]
    env: dict[str, str]
    pass_fds: list[int]
    cwd: str
    cold: bool = False  # never forked warm (a retry after a warm start failed)


@dataclass(frozen=True)
class Started:
    """A spawn's outcome: generation *number* runs as *process* (forked *warm*, or exec'd)."""

    number: int
    process: subprocess.Popen[bytes] = field(compare=False)
    warm: bool = False


@dataclass(frozen=True)
class StartAgainCold:
    """A spawn's outcome: start generation *number* again, cold, with a new channel. The
    fork request sent for it was given up, and a late template may still fork it: that
    process must find its channel closed (and leave), not share the cold one's."""

    number: int


#: What a spawner reports when a spawn it answered later completes.
Outcome = Started | act.SpawnFailed | StartAgainCold
#: A selector source: a file object and the reader that turns its readiness into outcomes.
AddSource = Callable[[object, Callable[[], list[Outcome]]], None]


class Spawner:
    """Starts generations by exec (cold), and signals them. The warm starter
    (:class:`grace_plugins.warm.WarmSpawner`) adds forks from a template; the supervisor's
    loop treats both alike. Replace it in tests."""

    def attach(self, add: AddSource, remove: Callable[[object], None]) -> None:
        """Receive the loop's source registry (sockets the spawner waits on); none here."""

    def spawn(self, request: SpawnRequest) -> Started | None:
        """Start *request* by exec, SIGHUP blocked until the generation is ready for it.
        Does not block on the child. Returns the outcome (``None``: it comes later, from one
        of the spawner's sources). Raises ``OSError`` if it cannot start."""
        argv, cwd = pinned(request.argv, request.cwd)
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
        try:
            process = subprocess.Popen(
                argv,
                env=request.env,
                pass_fds=tuple(request.pass_fds),
                close_fds=True,
                cwd=cwd,
                start_new_session=True,
            )
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        return Started(request.number, process)

    def pids(self) -> set[int]:
        """Processes of the spawner's own (the warm-start templates): not orphans."""
        return set()

    def reap(self) -> list[Outcome]:
        """After a SIGCHLD: notice the spawner's own processes that exited."""
        return []

    def deadline(self) -> float | None:
        """When :meth:`expire` has something to do (``time.monotonic()``), if ever."""
        return None

    def expire(self, now: float) -> list[Outcome]:
        """Give up on what is overdue at *now*."""
        return []

    def refresh(self) -> None:
        """A generation became current (warm start: rebuild the template if it is behind)."""

    def cancel(self, number: int) -> None:
        """Generation *number*, whose outcome was to come later, was given up (a stop, a
        rollback): what has not started for it yet must not start (warm start)."""

    def drop(self, why: str) -> None:
        """The template was at fault: discard it (warm start)."""

    def close(self) -> None:
        """Release what the spawner holds (nothing here; the warm starter's template)."""

    def signal_group(self, process: subprocess.Popen[bytes], signum: int) -> None:
        """Send *signum* to the process group a generation leads (its forked helpers too)."""
        if process.returncode is not None:
            return
        try:
            os.killpg(process.pid, signum)
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signum)


def reap_orphans(own_pids: Iterable[int]) -> int:
    """As PID 1 (a container without an init) or a child subreaper (warm start), reap exited
    orphans re-parented to us.

    Peeks with ``waitid(WNOWAIT)`` so that the status of a process of ours (*own_pids*:
    generations, templates, the preflight run) is never stolen from its handle (which reaps it
    by its pid); stops at the first such process found. Returns how many orphans were reaped.
    Does nothing otherwise. Each orphan's status is kept a while: it may be a generation
    whose pid was still on its way to us (:class:`ChildProcess` claims it).
    """
    if not (_subreaper or os.getpid() == 1):
        return 0
    if not hasattr(os, "waitid") or not hasattr(os, "WNOWAIT"):
        return 0
    own_pids = set(own_pids)
    reaped = 0
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return reaped
        if info is None or info.si_pid in own_pids:
            return reaped
        with contextlib.suppress(ChildProcessError):
            _, status = os.waitpid(info.si_pid, 0)
            _remember_orphan(info.si_pid, os.waitstatus_to_exitcode(status))
        reaped += 1


def _remember_orphan(pid: int, returncode: int) -> None:
    _orphan_statuses.pop(pid, None)  # a reused pid: the latest status, kept the longest
    _orphan_statuses[pid] = returncode
    while len(_orphan_statuses) > _ORPHAN_STATUSES_KEPT:
        del _orphan_statuses[next(iter(_orphan_statuses))]


def pid_alive(pid: int) -> bool:
    """Whether *pid* exists (a zombie not yet reaped counts as alive; so does a process of
    another user, which we may not signal)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def parent_pid(pid: int) -> int | None:
    """The parent of process *pid*, or ``None`` where ``/proc`` does not say (or it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return int(handle.read().rpartition(")")[2].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def ancestor_where(
    pid: int, wanted: Callable[[int], bool], parent_of: Callable[[int], int | None], depth: int = 3
) -> int | None:
    """The nearest of *pid*'s ancestors (up to *depth* generations up) for which *wanted* is
    true: the supervisor or gunicorn master of a generation, a worker, a mold or a template."""
    for _ in range(depth):
        parent = parent_of(pid)
        if parent is None or parent <= 1:
            return None
        if wanted(parent):
            return parent
        pid = parent
    return None


def process_start_time() -> float | None:
    """When this process started, on the ``time.time()`` scale, or ``None`` where ``/proc``
    does not say (at most a clock tick late: a save in that tick precedes any import). A
    generation's load begins there: at its exec (cold start) or its fork (warm start), after
    whatever triggered it; the reloaders catch up on saves made since."""
    try:
        with open("/proc/self/stat") as handle:
            ticks = int(handle.read().rpartition(")")[2].split()[19])
        since_boot = time.clock_gettime(time.CLOCK_BOOTTIME)  # /proc counts from boot too
        per_second = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None
    # /proc rounds the start down to a tick: take the tick's end
    return time.time() - (since_boot - (ticks + 1) / per_second)
