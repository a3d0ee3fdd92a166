"""A warm-start template as the supervisor sees it: a child process and its private socket.

:func:`start_template` runs ``python [the program's flags] -c BOOT`` (the template's own code is
:mod:`grace_plugins.template`) and tells it what to preload; :meth:`TemplateProcess.verdict`
reads its answer (what it preloaded and every file it stands for, or why it is unusable);
:meth:`TemplateProcess.stop` ends it. The supervisor imports none of what the template does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping

import grace_plugins
from grace_plugins import preload
from grace_plugins.cmdline import Program, interpreter, pinned
from grace_plugins.handoff import HANDOFF_VAR
from grace_plugins.sdnotify import NOTIFY_VAR
from grace_plugins.template import BOOT, Wire

#: Seconds a template asked to stop has to exit by itself before it is killed.
LEAVE_SECONDS = 2.0


@dataclasses.dataclass
class TemplateProcess:
    """One template: importing until its verdict, then forking generations on request."""

    process: subprocess.Popen[bytes]
    wire: Wire
    argv: list[str]  # the command line its generations run
    started: float
    #: file -> (mtime ns, size) when the template imported it; file -> module name.
    stamps: dict[str, preload.Stamp] = dataclasses.field(default_factory=dict)
    names: dict[str, str] = dataclasses.field(default_factory=dict)
    known: frozenset[str] = frozenset()  # every module name its forks will report
    report: str = ""  # the module report it preloads
    #: [name, culprit, reason] of each top-level import it left to the generations
    left: list[list[str]] = dataclasses.field(default_factory=list)
    ready_ms: int = 0  # from its start to ready, plus the time each growth took
    tried: int = 0  # top-level imports it tried or knew were left out (:func:`.preload.poor_bet`)
    preloaded: int = 0  # the modules of the report it holds (as its own log line says)
    physical: str = ""  # where its working directory led when it started
    leave_by: float | None = None  # once asked to stop: SIGKILL if still there then
    stale_answers: int = 0  # owed to fork requests given up on (it answers in their order)
    #: while it imports: why it is a poor bet for a held first generation (``poor_bet``)
    poor: str | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def verdict(self) -> str | None:
        """Read the answer to the preload, once whole (never blocks): ``None`` when the
        template is ready to fork, else why it is unusable. A word said while it imports
        (:attr:`poor`) is taken in on the way.

        :raises TimeoutError: no whole answer yet.
        """
        while True:
            try:
                got = self.wire.receive(0.0)
            except TimeoutError:  # an OSError too: a big answer is read in parts, never an exit
                raise
            except (OSError, ValueError):  # a broken template: as if it had exited
                got = None
            if got is None:
                return "it exited"
            if "poor" not in got[0]:
                return self.absorb(got[0])
            self.poor = str(got[0]["poor"])  # said while importing: the verdict comes later

    def absorb(self, answer: dict) -> str | None:
        """Take in a preload's answer (the first, or one after it grew): ``None`` when the
        template can fork, else why not."""
        if "unsafe" in answer:
            return str(answer["unsafe"])
        self.names.update((str(k), str(v)) for k, v in answer["files"].items())
        for path, value in answer["stamps"].items():
            self.stamps[path] = None if value is None else (int(value[0]), int(value[1]))
        self.known |= frozenset(answer["known"])
        self.tried += int(answer.get("tried", 0))
        self.preloaded = int(answer.get("ready", self.preloaded))
        left = {one[0] for one in self.left}
        self.left += [[str(p) for p in one] for one in answer.get("left", []) if one[0] not in left]
        return None

    def ask_fork(self, argv: list[str], env: Mapping[str, str], cwd: str, fds: list[int]) -> None:
        """Ask it to fork a generation running *argv* in *cwd* with *env* and *fds* (its
        answer, the pid, comes on its socket). Raises ``OSError`` when it is gone."""
        message = {"argv": argv, "env": dict(env), "cwd": cwd, "fds": fds}
        self.wire.send(message, fds)

    def why_stale(self, cwd: str) -> str | None:
        """Why a generation run in *cwd* must not be forked from it, or ``None``: a preloaded
        file changed on disk since it imported it, or *cwd* (a symlink switched to another
        release) leads elsewhere than when it started, so that its ``sys.path`` (a relative
        ``PYTHONPATH``, the ``.pth`` files it read) names the old release."""
        changed = preload.changed_files(self.stamps, {p: preload.stamp(p) for p in self.stamps})
        if changed:
            return f"{self.names.get(changed[0], changed[0])} changed on disk ({changed[0]})"
        leads = os.path.realpath(cwd)
        if self.physical and leads != self.physical:
            return f"{cwd} leads to {leads} now, not to {self.physical}"
        return None

    def leave(self, within: float = LEAVE_SECONDS) -> None:
        """Ask it to stop, without waiting: at the end of file on its socket it exits (after
        the line it may still be printing); :meth:`kill` it if it is still there by
        :attr:`leave_by`."""
        if self.leave_by is None:
            self.wire.sock.close()
            self.leave_by = time.monotonic() + within

    def kill(self) -> None:
        """SIGKILL it (and what it forked that is still in its group) and reap it. Bounded."""
        self.leave()
        with contextlib.suppress(OSError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(1.0)


class Leaving:
    """The templates asked to stop that have not exited yet: each leaves by itself (after the
    line it may still be printing) or is killed at its :attr:`~TemplateProcess.leave_by`."""

    def __init__(self) -> None:
        self._templates: list[TemplateProcess] = []

    def add(self, template: TemplateProcess, within: float = LEAVE_SECONDS) -> None:
        template.leave(within)
        self._templates.append(template)

    def pids(self) -> set[int]:
        return {t.pid for t in self._templates}

    def reap(self) -> None:
        """After a SIGCHLD: forget those that exited (``poll`` reaps them)."""
        self._templates = [t for t in self._templates if t.process.poll() is None]

    def deadline(self) -> float | None:
        return min((t.leave_by for t in self._templates if t.leave_by is not None), default=None)

    def expire(self, now: float) -> None:
        """Kill those still there past their time."""
        for t in [t for t in self._templates if t.leave_by is not None and now >= t.leave_by]:
            t.kill()
            self._templates.remove(t)

    def close(self) -> None:
        """Wait for each until its time, then kill it. Blocks up to :data:`LEAVE_SECONDS`."""
        for t in self._templates:
            with contextlib.suppress(subprocess.TimeoutExpired):
                t.process.wait(max(0.0, (t.leave_by or 0.0) - time.monotonic()))
            t.kill()
        self._templates = []


def start_template(
    program: Program,
    argv: list[str],
    env: Mapping[str, str],
    cwd: str,
    report: str,
    seed: str | None = None,
) -> TemplateProcess:
    """Start a template that preloads what the module *report* lists, for generations that
    run *argv* (parsed as *program*); what the program's *seed* says its last template left
    out is not tried again. Does not block on its import.

    :raises OSError: when it cannot be started.
    """
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(grace_plugins.__file__)))
    boot = [interpreter(), *program.flags, "-c", BOOT, package_parent, str(theirs.fileno())]
    boot, physical = pinned(boot, cwd)  # its forks, and what they import later, stay there
    try:
        process = subprocess.Popen(
            boot,
            env={k: v for k, v in env.items() if k not in (NOTIFY_VAR, HANDOFF_VAR)},
            pass_fds=(theirs.fileno(),),
            close_fds=True,
            cwd=physical,
            start_new_session=True,
        )
    except OSError:
        ours.close()
        raise
    finally:
        theirs.close()
    template = TemplateProcess(
        process, Wire(ours), argv, time.monotonic(), report=report, physical=physical
    )
    setup = {"report": report, "program": dataclasses.asdict(program), "cwd": cwd, "seed": seed}
    template.wire.send(setup)
    return template


def forget_dead_reports(directory: str) -> None:
    """Remove the module reports of supervisors that are gone (killed, never closed)."""
    from grace_plugins.process import pid_alive

    with contextlib.suppress(OSError):
        for name in os.listdir(directory):
            pid = name[len("warm-") : -len(".json")]
            ours = name.startswith("warm-") and name.endswith(".json") and pid.isdigit()
            if ours and not pid_alive(int(pid)):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(directory, name))


class ReportFile:
    """The file this supervisor's generations write their module report to (its existence
    asks them to: :func:`.preload.write_report`), as the supervisor reads it."""

    def __init__(self, supervisor_pid: int) -> None:
        self.path = preload.report_path(supervisor_pid)
        forget_dead_reports(os.path.dirname(self.path))
        with open(self.path, "w"):
            pass
        self._read: preload.Stamp = None  # the stamp of the report last read

    def new_names(self) -> frozenset[str] | None:
        """The module names of a report written since the last call, or None.

        :raises OSError, ValueError, KeyError: an unreadable report.
        """
        current = preload.stamp(self.path)
        if current == self._read or current is None or current[1] == 0:
            return None
        self._read = current
        with open(self.path) as handle:
            return frozenset(str(item[0]) for item in json.load(handle)["modules"])

    def read_again(self) -> None:
        """The next :meth:`new_names` reads the report even if it did not change."""
        self._read = None

    def close(self) -> None:
        """Withdraw the request: generations stop reporting."""
        with contextlib.suppress(OSError):
            os.unlink(self.path)
