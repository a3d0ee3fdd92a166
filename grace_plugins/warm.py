"""Warm start, the supervisor's side: a spawner that forks generations from a template.

:class:`WarmSpawner` is a :class:`~grace_plugins.process.Spawner`: the supervisor's loop does
not know whether a generation was forked warm or started cold. It

* asks generations to report their modules (:func:`grace_plugins.preload.write_report`) and
  (re)builds the template (:mod:`grace_plugins.template`) when a report names a module the
  template does not cover;
* before each spawn, checks the template: alive, answered, and every preloaded file unchanged on
  disk (mtime and size); a changed file kills the template, names the module in the log, and
  that generation starts cold (the next report rebuilds the template);
* falls back to a cold start, with one log line saying why, whenever the template is missing,
  unusable, does not answer within a bound, or refuses: never a failed or hung spawn.

The supervisor imports nothing of the preload set: only the template does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence

import grace_plugins
from grace_plugins import preload
from grace_plugins.handoff import HANDOFF_VAR
from grace_plugins.log import get_logger
from grace_plugins.preload import parse_program
from grace_plugins.process import (
    KEEP_PIDS,
    ChildProcess,
    Spawner,
    become_subreaper,
    pid_alive,
)
from grace_plugins.sdnotify import NOTIFY_VAR
from grace_plugins.template import BOOT, Wire

#: Seconds a spawn waits for the template's fork before starting cold instead.
FORK_TIMEOUT = 5.0


class _Cold(Exception):
    """Why this generation starts cold (one log line)."""


def unsupported() -> str | None:
    """Why warm start cannot work here, or ``None`` (Linux: fork, SCM_RIGHTS, a subreaper)."""
    if not sys.platform.startswith("linux"):
        return f"warm start needs Linux (this is {sys.platform})"
    if not hasattr(os, "fork") or not hasattr(socket, "send_fds"):
        return "warm start needs fork and SCM_RIGHTS"
    if not become_subreaper():
        return "warm start needs prctl(PR_SET_CHILD_SUBREAPER)"
    return None


@dataclasses.dataclass
class _Template:
    process: subprocess.Popen[bytes]
    wire: Wire
    argv: list[str]
    started: float
    ready: bool = False
    #: file -> (mtime ns, size) when the template imported it.
    stamps: dict[str, tuple[int, int] | None] = dataclasses.field(default_factory=dict)
    names: dict[str, str] = dataclasses.field(default_factory=dict)


class WarmSpawner(Spawner):
    """Forks generations from a warm template when it can, starts them cold otherwise."""

    def __init__(self, log: logging.Logger | None = None, argv_len: int | None = None) -> None:
        self.log = log or get_logger()
        self.argv_len = len(sys.argv) if argv_len is None else argv_len
        self.report = preload.report_path(os.getpid())
        _forget_dead_reports(os.path.dirname(self.report))
        with open(self.report, "w"):  # its existence asks generations to report
            pass
        self.on_poll = self.tick
        self.template: _Template | None = None  # ready: forks generations
        self.building: _Template | None = None  # importing: replaces it once ready
        self._report_stamp: preload.Stamp = None
        #: module names the last template covered (ok or unusable): no rebuild for those.
        self._basis: frozenset[str] | None = None
        self._unusable: str | None = None
        self._program: tuple[list[str], Mapping[str, str], str] | None = None
        self._spawns = 0

    # -- the Spawner interface --------------------------------------------------------------
    def spawn(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        pass_fds: Sequence[int],
        cwd: str,
    ) -> subprocess.Popen[bytes]:
        """Fork from the template, or start cold (see the module's docstring). Blocks at most
        :data:`FORK_TIMEOUT` seconds (the template's fork). Raises ``OSError`` as cold does."""
        self._spawns += 1
        self._program = (list(argv), dict(env), cwd)
        self.tick()
        began = time.monotonic()
        try:
            pid = self._fork(list(argv), env, pass_fds, cwd)
        except _Cold as why:
            if self._spawns > 1:
                self.log.info("warm start: %s; this generation starts cold", why)
            return super().spawn(argv, env, pass_fds, cwd)
        self.log.info(
            "warm start: pid %d forked from the template in %d ms",
            pid,
            (time.monotonic() - began) * 1000,
        )
        return ChildProcess(pid, self.tick)

    def close(self) -> None:
        """Stop the templates and withdraw the report request. Blocks up to two seconds."""
        self._drop()
        with contextlib.suppress(OSError):
            os.unlink(self.report)

    # -- the template's life ----------------------------------------------------------------
    def tick(self) -> None:
        """Between events: notice a template's verdict or death, and a new module report."""
        with contextlib.suppress(Exception):  # warm start must never break the loop
            self._check_templates()
            self._check_report()

    def _check_templates(self) -> None:
        t = self.template
        if t is not None and t.process.poll() is not None:
            self.log.info(
                "warm start: the template (pid %d) exited with status %s; the next generation"
                " starts cold",
                t.process.pid,
                t.process.returncode,
            )
            _stop(t)
            self.template = None
            self._unusable = f"the template exited with status {t.process.returncode}"
            self._basis = None  # the next report rebuilds it
        b = self.building
        if b is not None:
            with contextlib.suppress(TimeoutError):
                self._verdict(b, 0.0)

    def _check_report(self) -> None:
        current = preload.stamp(self.report)
        if current == self._report_stamp or current is None or current[1] == 0:
            return
        self._report_stamp = current
        with open(self.report) as handle:
            names = frozenset(str(item[0]) for item in json.load(handle)["modules"])
        if self._program is not None and (self._basis is None or not names <= self._basis):
            self._build(names)

    def _build(self, names: frozenset[str]) -> None:
        """Start a new template; the current one (if any) forks until the new one is ready."""
        assert self._program is not None
        argv, env, cwd = self._program
        program = parse_program(argv, self.argv_len)
        _stop(self.building)
        self.building = None
        self._basis = names
        if program is None or argv[0] != sys.executable:
            self._unusable = "the command line cannot be re-run in-process (python -c?)"
            return
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        package_parent = os.path.dirname(os.path.dirname(os.path.abspath(grace_plugins.__file__)))
        boot = [sys.executable, *program.flags, "-c", BOOT, package_parent, str(theirs.fileno())]
        try:
            process = subprocess.Popen(
                boot,
                env={k: v for k, v in env.items() if k not in (NOTIFY_VAR, HANDOFF_VAR)},
                pass_fds=(theirs.fileno(),),
                close_fds=True,
                cwd=cwd,
                start_new_session=True,
            )
        except OSError as exc:
            ours.close()
            self._unusable = f"the template could not start ({exc})"
            return
        finally:
            theirs.close()
        KEEP_PIDS.add(process.pid)
        self.building = _Template(process, Wire(ours), argv, time.monotonic())
        self.building.wire.send(
            {"report": self.report, "program": dataclasses.asdict(program), "cwd": cwd}
        )

    def _verdict(self, b: _Template, timeout: float) -> None:
        """Read a new template's answer to its preload; promote it if ready.

        :raises TimeoutError: no answer yet.
        """
        try:
            got = b.wire.receive(timeout)
        except TimeoutError:
            raise
        except (OSError, ValueError):  # a broken template: as if it had exited
            got = None
        self.building = None
        if got is None or "unsafe" in got[0]:
            why = "it exited" if got is None else got[0]["unsafe"]
            _stop(b)
            if self.template is None:
                self._unusable = f"the template is unusable: {why}"
            return
        answer = got[0]
        b.ready = True
        b.names = {str(k): str(v) for k, v in answer["files"].items()}
        for path, value in answer["stamps"].items():
            b.stamps[path] = None if value is None else (int(value[0]), int(value[1]))
        self._basis = (self._basis or frozenset()) | frozenset(answer["known"])
        _stop(self.template)
        self.template, self._unusable = b, None
        self.log.info(
            "warm start: template (pid %d) ready after %d ms with %d modules preloaded",
            b.process.pid,
            (time.monotonic() - b.started) * 1000,
            len(b.names),
        )

    def _drop(self, reason: str | None = None) -> None:
        """Stop both templates; *reason* is why later generations start cold."""
        _stop(self.template)
        _stop(self.building)
        self.template = self.building = None
        self._unusable = reason

    # -- one warm spawn ---------------------------------------------------------------------
    def _fork(self, argv: list[str], env: Mapping[str, str], fds: Sequence[int], cwd: str) -> int:
        t = self.template
        if t is None:
            if self.building is not None:
                raise _Cold("the template is still importing")
            raise _Cold(self._unusable or "no template yet (built once a generation reports)")
        if argv != t.argv:
            self._drop()
            raise _Cold("the command line changed")
        changed = preload.changed_files(t.stamps, {p: preload.stamp(p) for p in t.stamps})
        if changed:
            self._drop()
            self._basis = None  # the next report rebuilds it, with the new file
            module = t.names.get(changed[0], changed[0])
            raise _Cold(f"{module} changed on disk ({changed[0]}); the template will be rebuilt")
        try:
            t.wire.send({"argv": argv, "env": dict(env), "cwd": cwd, "fds": list(fds)}, fds)
            got = t.wire.receive(FORK_TIMEOUT)
        except TimeoutError:
            self._drop(reason="the template stopped answering")
            self._basis = None
            raise _Cold(f"the template did not fork within {FORK_TIMEOUT:g} s") from None
        except (OSError, ValueError) as exc:
            got, problem = None, f" ({exc})"
        else:
            problem = ""
        if got is None:
            self._drop(reason="the template is gone")
            self._basis = None  # the next report rebuilds it
            raise _Cold(f"the template exited{problem}")
        if "pid" not in got[0]:
            self._drop(reason=str(got[0].get("error")))
            self._basis = None
            raise _Cold(f"the template refused to fork: {got[0].get('error')}")
        return int(got[0]["pid"])


def _stop(t: _Template | None) -> None:
    """Stop template *t* (if any): closing its socket ends it; SIGKILL makes sure. Bounded."""
    if t is None:
        return
    t.wire.sock.close()
    with contextlib.suppress(OSError):
        os.killpg(t.process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        t.process.wait(1.0)
    KEEP_PIDS.discard(t.process.pid)


def _forget_dead_reports(directory: str) -> None:
    """Remove the module reports of supervisors that are gone (killed, never closed)."""
    with contextlib.suppress(OSError):
        for name in os.listdir(directory):
            pid = name[len("warm-") : -len(".json")]
            ours = name.startswith("warm-") and name.endswith(".json") and pid.isdigit()
            if ours and not pid_alive(int(pid)):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(directory, name))
