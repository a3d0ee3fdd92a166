"""A server under test (or under benchmark) as a real process, and the bounded waits on it.

:class:`ServerProcess` starts a server in its own session, collects its output, and waits on
*lines it prints* (never on sleeps); every wait has a deadline and says what it waited for.
Clean-up kills only what this server started: :class:`Owned` records, while the server runs,
every descendant by pid *and start time* (``/proc``), and kills only those still matching; a
pid printed in a log is never killed on its word alone (it may be reused, and tests run as root).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import IO

from tests.harness import procfs
from tests.harness.client import http_get

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PYTHON = sys.executable
READY_LINE = r"generation (\d+) \(pid (\d+)\) ready after (\d+) ms"
LISTEN_LINE = r"serving (?:tcp:\[?[^\]\s]*\]?:(\d+)|unix:(\S+?))[,.;\s]"
#: Variables a server under test must not inherit from the shell that runs the tests.
INHERITED_VARS = (
    "GRACE_PLUGINS_HANDOFF",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
    "WERKZEUG_SERVER_FD",
    "WERKZEUG_RUN_MAIN",
    "RUN_MAIN",
)


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> object:
    """Poll *predicate* until truthy (every 20 ms), at most *timeout* s; fail naming *what*."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)


def joined(thread: threading.Thread, timeout: float, what: str = "a client thread") -> None:
    """Join *thread*; fail (naming *what*) if it is still running after *timeout* s."""
    thread.join(timeout)
    if thread.is_alive():
        raise AssertionError(f"{what} still running after {timeout:g} s")


def server_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment, unbuffered, with the checkout on ``PYTHONPATH`` and *extra* on top."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH", "")) if p)
    env.update(extra or {})
    return env


class Owned:
    """The processes one started process is responsible for: itself and every descendant seen
    while it ran, each recorded with its start time. :meth:`kill` signals only those still the
    same process, and the process groups they lead (a live leader keeps its group id ours)."""

    def __init__(self, pid: int) -> None:
        self.root = procfs.stat(pid)
        self.members: dict[int, procfs.ProcStat] = {}
        self._lock = threading.Lock()
        if self.root is not None:
            self.members[pid] = self.root

    def scan(self) -> None:
        """Record the root's current descendants (cheap; call it whenever a pid shows up)."""
        if self.root is None:
            return
        found = procfs.descendants(self.root)
        with self._lock:
            for one in found:
                self.members.setdefault(one.pid, one)

    def alive(self) -> list[procfs.ProcStat]:
        with self._lock:
            members = list(self.members.values())
        return [one for one in members if procfs.same_process(one)]

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send *sig* to every recorded process still alive, and to the groups they lead."""
        for one in self.alive():
            if one.pgrp == one.pid:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(one.pid, sig)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(one.pid, sig)


class ServerProcess:
    """A server under test, started in a new session (its own process group).

    Its output goes to a pipe read by a thread (:meth:`wait_for`), or to *log_path*."""

    def __init__(
        self,
        argv: Sequence[str],
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        pass_fds: Sequence[int] = (),
        log_path: str | None = None,
        full_env: dict[str, str] | None = None,
    ) -> None:
        self.argv = list(argv)
        self._lines: list[str] = []
        self._times: list[float] = []  # time.monotonic() when each line was read
        self._cond = threading.Condition()
        self._log: IO[bytes] | None = open(log_path, "wb") if log_path else None  # noqa: SIM115
        self.log_path = log_path
        self.proc = subprocess.Popen(
            self.argv,
            cwd=cwd,
            env=full_env if full_env is not None else server_env(env),
            stdout=self._log or subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            pass_fds=tuple(pass_fds),
        )
        self.pid = self.proc.pid
        self.owned = Owned(self.pid)
        self._reader: threading.Thread | None = None
        if self._log is None:
            self._reader = threading.Thread(target=self._read, daemon=True)
            self._reader.start()
        self.port: int | None = None

    # -- output ---------------------------------------------------------------------------------
    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if "pid" in line:  # a process may have started: record it while it is surely ours
                self.owned.scan()
            with self._cond:
                self._lines.append(line)
                self._times.append(time.monotonic())
                self._cond.notify_all()
        with self._cond:
            self._lines.append("<EOF>")
            self._times.append(time.monotonic())
            self._cond.notify_all()

    def output(self, after: int = 0) -> str:
        """What the server printed (from position *after*); once it exited, all of it (its
        last lines may still be in the pipe when ``proc.wait()`` returns)."""
        if self.log_path:
            with open(self.log_path, "rb") as handle:
                return handle.read().decode("utf-8", "replace")
        with self._cond:
            if self._reader is not None and self.proc.poll() is not None:
                self._cond.wait_for(lambda: self._lines[-1:] == ["<EOF>"], timeout=5)
            return "\n".join(self._lines[after:])

    def mark(self) -> int:
        """The current output position, to wait for lines printed after it."""
        with self._cond:
            return len(self._lines)

    def wait_for(self, pattern: str, timeout: float = 30.0, after: int = 0) -> re.Match[str]:
        """Wait for a line matching *pattern* printed at position *after* or later."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self._lines[after:]:
                    found = regex.search(line)
                    if found:
                        return found
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self._lines and self._lines[-1] == "<EOF>"):
                    tail = "\n".join(self._lines[-40:])
                    raise AssertionError(
                        f"waited {timeout:g} s for a line matching {pattern!r}; the server"
                        f" {'exited' if self._lines[-1:] == ['<EOF>'] else 'is running'}."
                        f" Last output:\n{tail}"
                    )
                self._cond.wait(min(remaining, 0.5))

    def count(self, pattern: str, after: int = 0) -> int:
        """How many lines printed at *after* or later match *pattern*."""
        regex = re.compile(pattern)
        with self._cond:
            return sum(1 for line in self._lines[after:] if regex.search(line))

    def times_of(self, pattern: str, after: int = 0) -> list[float]:
        """When (``time.monotonic()``, as read) each line matching *pattern* was printed."""
        regex = re.compile(pattern)
        with self._cond:
            pairs = list(zip(self._lines[after:], self._times[after:], strict=True))
        return [moment for line, moment in pairs if regex.search(line)]

    def wait_ready(self, timeout: float = 30.0) -> int:
        """Wait for the first generation's ready line; return the port it listens on."""
        self.wait_for(READY_LINE, timeout)
        found = self.wait_for(LISTEN_LINE, timeout)
        if found.group(1):
            self.port = int(found.group(1))
        return self.port or 0

    def wait_warm(self, timeout: float = 30.0) -> None:
        """Wait until the warm-start template is ready (where warm start is available), so that
        fd counts taken afterwards include the supervisor's socket to it."""
        if sys.platform.startswith("linux"):
            self.wait_for(r"warm start: template \(pid \d+\) ready after", timeout)

    def live_generations(self) -> list[int]:
        """Pids of the generations still running as the supervisor's children (the warm-start
        template, also a child, is not a generation)."""
        generations = set(self.generation_pids().values())
        return [pid for pid in procfs.child_pids(self.pid) or [] if pid in generations]

    def generation_pids(self) -> dict[int, int]:
        """{generation number: pid} for every generation the supervisor reported."""
        pids: dict[int, int] = {}
        for found in re.finditer(r"generation (\d+) \(pid (\d+)\)", self.output()):
            pids[int(found.group(1))] = int(found.group(2))
        return pids

    # -- signals --------------------------------------------------------------------------------
    def upgrade(self, timeout: float = 30.0, sig: int = signal.SIGHUP, pid: int | None = None):
        """Send *sig* (HUP) and wait for the next generation's ready line; return its pid."""
        start = self.mark()
        os.kill(pid or self.pid, sig)
        return int(self.wait_for(READY_LINE, timeout, after=start).group(2))

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM the server and wait for it to exit; return its exit status."""
        self.owned.scan()
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"server did not stop within {timeout:g} s. Output:\n{self.output()[-3000:]}"
            ) from None

    def close(self, grace: float = 5.0) -> None:
        """Make sure nothing this server started survives: SIGTERM, then SIGKILL of every
        process recorded as ours (and the groups they lead). Bounded."""
        self.owned.scan()
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(grace)
        self.owned.kill(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        if self._reader is not None:
            self._reader.join(5)
        if self.proc.stdout:
            self.proc.stdout.close()
        if self._log is not None:
            self._log.close()

    def extra_pids(self) -> list[int]:
        """Kept for callers of the old helpers: clean-up no longer trusts printed pids."""
        return []

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def grace_cli(
    *args: str, timeout: float = 75, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m grace_plugins ARGS`` (``reload``, ``status``) from this checkout, with
    *env* on top of this environment."""
    return subprocess.run(
        [PYTHON, "-m", "grace_plugins", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": ROOT, **(env or {})},
    )


def wait_served_by(port: int, pid: int, timeout: float = 10.0, path: str = "/hello"):
    """Return the first response from *pid*: after a new generation is ready, the old one may
    accept for one more poll interval before it closes its listener copy (and serves what it
    accepted: nothing fails, but a test must not assume the switch is instant)."""
    seen: list[int] = []

    def probe():
        resp = http_get(port, path)
        seen.append(resp.pid)
        return resp if resp.pid == pid else None

    try:
        return wait_until(probe, timeout, f"a response from pid {pid}")
    except AssertionError:
        raise AssertionError(
            f"no response from pid {pid} in {timeout:g} s; pids seen: {sorted(set(seen))}"
        ) from None
