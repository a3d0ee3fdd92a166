"""The warm-start template: a plain interpreter that has imported the libraries, and forks.

The supervisor starts it with the program's interpreter and flags (``python [flags] -c BOOT``).
It imports the *preload set* (what the serving generation imported, except the project's own:
:mod:`grace_plugins.preload`), then answers spawn requests on its private socket: each carries
the command line, environment, working directory and (``SCM_RIGHTS``) the fds of a generation.
It double-forks, so that the generation is re-parented to the supervisor (a child subreaper)
and reaped by it as if it had been spawned; the generation then resets what a fork copies
(signal dispositions and mask, session, fds, environment, working directory, ``random``) and
runs the user's command line in-process with :mod:`runpy`: a cold start with the imports done.

Each import of the preload is atomic (:mod:`grace_plugins.preloader`): one that fails, reads the
project's settings or files, starts a thread or leaves an fd open is undone and left to the
generations, and the template keeps the rest; one line at start says what was kept and what was
left out, and nothing else is printed (``GRACE_PLUGINS_WARM_DEBUG=1`` shows the details). A
thread that could not be refused makes the template start its preload over, in place, without
that import. The template configures no logging and refuses to fork with a second thread or a
project module.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import pkgutil  # noqa: F401 - runpy.run_path imports it: known to the template, not new
import socket
import sys
import time
import traceback
import weakref
from collections.abc import Callable
from typing import Any, NoReturn

from grace_plugins import forked, preload
from grace_plugins.cmdline import Program, program_path0
from grace_plugins.preloader import Preloader
from grace_plugins.probes import threads
from grace_plugins.wire import Wire, answer_fork, close_fds

BOOT = "import sys;sys.path.append(sys.argv[1]);from grace_plugins.template import main;main()"
#: Modules with effects at import (printing, opening a browser): never preloaded.
NEVER_PRELOAD = frozenset({"this", "antigravity"})
#: Times a preload starts over in a fresh interpreter without the imports that started a thread
#: it could not refuse (from C); past that the template is unusable.
MAX_RESTARTS = 3
#: The environment the supervisor gave the template, before any library changed it.
_ENVIRON = dict(os.environ)


class Template:
    """The template process's state: its socket, what it preloaded, what to reset."""

    def __init__(self, sock: socket.socket) -> None:
        self.wire = Wire(sock)
        self.dispositions: dict[int, Any] = {}
        self.roots: list[str] = []
        self.stdlib = preload.stdlib_dirs()
        self.generators: list[weakref.ref[Any]] = []
        #: modules found not to be the project's, by name: only new ones are looked at again
        self.cleared: dict[str, object] = {}
        #: the top-level imports left to the generations (not tried again when it grows)
        self.left: list[preload.LeftOut] = []
        #: those the program's last template left out (its seed): not tried at the preload
        self.left_last_time: preload.SeedLeft = {}
        #: the working directory, base ``sys.path`` and exclusions of its preload
        self.where: tuple[str, list[str], dict[str, str]] = ("", [], {})

    def run(self, resumed: dict[str, Any] | None = None) -> Callable[[], None]:
        """Preload, then serve spawn requests; returns (a job to run) only in a generation.

        *resumed*: the state a tainted preload passed to this process (:func:`_start_over`).
        """
        if resumed is None:
            got = self.wire.receive(None)
            if got is None:
                _quit()
            resumed = {"setup": got[0], "began": time.monotonic(), "excluded": {}, "restarts": 0}
        setup = resumed["setup"]
        program = Program(**setup["program"])
        self.left_last_time = preload.left_in_file(setup.get("seed"))
        cwd = setup["cwd"]
        self.program = program
        base = list(sys.path)
        if not getattr(sys.flags, "safe_path", False) and sys.path and sys.path[0] == "":
            base = base[1:]
            sys.path[0] = program_path0(program, cwd)
        self.where = (cwd, base, resumed["excluded"])
        verdict = self._preloaded(setup["report"])
        if "tainted" in verdict:
            tainted = verdict.pop("tainted")
            if resumed["restarts"] < MAX_RESTARTS:
                excluded = {**resumed["excluded"], **tainted}
                _start_over({**resumed, "excluded": excluded, "restarts": resumed["restarts"] + 1})
            culprit, reason = next(iter(tainted.items()))
            verdict = {"unsafe": f"{culprit} {reason} at import, every time (forking is unsafe)"}
        verdict["ms"] = ms = round((time.monotonic() - resumed["began"]) * 1000)
        verdict["restarts"] = resumed["restarts"]
        self._tell(verdict, verdict, "unusable, upgrades will start cold")
        again = f" (started over {resumed['restarts']}x)" if resumed["restarts"] else ""
        self.left = [preload.LeftOut(*one) for one in verdict["left"]]
        summary = preload.summarize(self.left)
        _say(f"preloaded {verdict['ready']} modules in {ms} ms{again}; {summary}")
        while True:
            got = self.wire.receive(None)
            if got is None:
                _quit()
            if "grow" in got[0]:
                self.grow(str(got[0]["grow"]))
                continue
            job = self.fork(*got)
            if job is not None:
                return job

    def grow(self, report_file: str) -> None:
        """Import, in place, what a newer module report names beyond the preload: the pages this
        template shares with the generations it forked stay shared, where a new template would
        hold copies of its own. Answers ``{"grown": verdict}``; one that cannot fork any more (a
        thread it could not refuse) says so and leaves."""
        began = time.monotonic()
        verdict = self._preloaded(report_file, self.left)
        if "tainted" in verdict:
            culprit, reason = next(iter(verdict.pop("tainted").items()))
            verdict = {"unsafe": f"{culprit} {reason} at import (forking is unsafe)"}
        verdict["ms"] = ms = round((time.monotonic() - began) * 1000)
        self._tell({"grown": verdict}, verdict, "cannot grow, upgrades will start cold")
        known = {one.name for one in self.left}
        new = [preload.LeftOut(*one) for one in verdict["left"] if one[0] not in known]
        self.left += new
        if verdict["added"] or new:
            more = f"; {preload.summarize(new)}" if new else ""
            _say(f"preloaded {len(verdict['added'])} more modules in {ms} ms{more}")

    def _preloaded(
        self, report_file: str, left_out: list[preload.LeftOut] | None = None
    ) -> dict[str, Any]:
        """:meth:`preload` the report, or why not."""
        try:
            return self.preload(report_file, left_out)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return {"unsafe": f"the generation's module report is unreadable ({exc})"}

    def _tell(self, message: dict[str, Any], verdict: dict[str, Any], unusable: str) -> None:
        """Send the supervisor *message* (a preload's *verdict*) first: once a line is printed
        it can be read. A template that cannot fork says *unusable* and why, and leaves."""
        self.dispositions = forked.dispositions()  # a library's handler, as a cold start has it
        try:
            self.wire.send(message)
        except OSError:  # the supervisor is gone, or replaced this template: nothing to say
            _quit()
        if "unsafe" in verdict:
            _say(f"{unusable}: {verdict['unsafe']}")
            _quit()

    def preload(
        self, report_file: str, left_out: list[preload.LeftOut] | None = None
    ) -> dict[str, Any]:
        """Import the report's modules but the project's; the answer the supervisor reads.
        *left_out*: the imports this template left out before (it grows: :meth:`grow`)."""
        cwd, base, excluded = self.where
        program = self.program
        with open(report_file) as handle:
            report = json.load(handle)
        if report.get("v") != preload.REPORT_VERSION:
            return {"unsafe": "the generation's module report has another format"}
        modules = [(str(n), o if isinstance(o, str) else None) for n, o in report["modules"]]
        script_dir = program_path0(program, cwd) if program.kind == "script" else None
        where = str(report.get("cwd") or "")  # the generation's own: physical
        self.roots = preload.project_roots(cwd, script_dir, report["path"], base, where)
        names, project = preload.split_modules(modules, self.roots, self.stdlib)
        origins = dict(modules)
        stamps: dict[str, preload.Stamp] = {}
        files: dict[str, str] = {}
        settings = os.environ.get("DJANGO_SETTINGS_MODULE")
        # what a seed (warm_seed) says its template left out is not tried again, if unchanged
        left_before = preload.still_left(
            {**self.left_last_time, **preload.left_in(report, report_file)}, origins
        )
        left_before.update((one.name, (one.culprit, one.reason)) for one in left_out or [])
        loaded_before = set(sys.modules)
        said_poor = left_out is not None  # said only while the first generation may wait
        with Preloader(self.roots, self.stdlib, excluded, settings) as preloader:
            for name in names:
                origin = origins.get(name)
                if origin and os.path.isabs(origin):
                    stamps[origin] = preload.stamp(origin)
                    files[origin] = name
                if name in sys.modules or name in NEVER_PRELOAD:
                    continue
                if name in left_before:
                    preloader.left.append(preload.LeftOut(name, *left_before[name]))
                else:
                    preloader.load(name)
                count, tried = len(preloader.left), len(preloader.left) + preloader.kept
                if not said_poor and preload.poor_bet(count, tried):
                    said_poor = True
                    with contextlib.suppress(OSError):  # the supervisor left: the verdict says
                        self.wire.send({"poor": f"left out {count} of the {tried} imports tried"})
            preloader.retry_circular()
        if preloader.tainted:
            return {"tainted": preloader.tainted}
        left = [[one.name, one.culprit, one.reason] for one in preloader.left]
        if preloader.left and not preloader.kept and left_out is None:
            return {"unsafe": f"nothing could be preloaded; {preload.summarize(preloader.left)}"}
        pulled = self.project_modules()
        if pulled:
            return {"unsafe": f"preloading pulled in the project's {', '.join(pulled[:3])}"}
        _stamp_the_rest(stamps, files)
        preloader.stamp_reads(stamps, files)
        preload.warm_metadata()
        gc.collect()
        self.generators = forked.generators()
        gc.freeze()
        return {
            "ready": sum(name in sys.modules for name in names),
            "known": sorted({*names, *project, *sys.modules}),  # what forks will report
            "skipped": [name for name in names if name not in sys.modules],
            "left": left,  # [name, culprit, reason] of each top-level import not preloaded
            "tried": len(preloader.left) + preloader.kept,  # top-level imports (poor_bet's)
            "added": sorted(set(sys.modules) - loaded_before),
            "stamps": stamps,
            "files": files,
        }

    def project_modules(self) -> list[str]:
        """The project's modules in ``sys.modules`` (none, or the template must not fork).
        Checked before every fork, so only the modules not cleared before are looked at."""
        fresh = [(n, m) for n, m in list(sys.modules.items()) if self.cleared.get(n) is not m]
        items = [(n, preload.module_origin(m)) for n, m in fresh]
        items = [(n, o) for n, o in items if n not in preload.ALWAYS_PROJECT]
        project = preload.split_modules(items, self.roots, self.stdlib)[1]
        found = set(project)
        self.cleared.update((n, m) for n, m in fresh if n not in found)
        return project

    def fork(self, request: dict[str, Any], fds: list[int]) -> Callable[[], None] | None:
        """Fork a generation for *request*; returns its job in the generation, else None."""
        try:
            problem = None
            if threads() > 1:
                problem = "the template has more than one thread"
            elif pulled := self.project_modules():
                problem = f"the template holds the project's {', '.join(pulled[:3])}"
            elif len(fds) != len(request["fds"]):
                problem = "the fds did not arrive"
            if problem:
                self.wire.send({"error": problem})
                close_fds(fds)
                return None
            job = self._double_fork(request, fds)
        except BaseException:
            close_fds(fds)
            raise
        if job is None:  # in the template: its copies go; in the generation they were moved
            close_fds(fds)
        return job

    def _double_fork(self, request: dict[str, Any], fds: list[int]) -> Callable[[], None] | None:
        with contextlib.suppress(Exception):
            sys.stdout.flush(), sys.stderr.flush()
        gc.freeze()  # the collector must not touch (and so copy) the preloaded pages
        read_end, write_end = os.pipe()
        try:
            middle = os.fork()
        except OSError as exc:
            os.close(read_end)
            os.close(write_end)
            self.wire.send({"error": f"fork failed: {exc}"})
            return None
        if middle == 0:
            me = os.getpid()
            try:
                os.close(read_end)
                pid = os.fork()
            except BaseException:
                os._exit(1)
            if pid == 0:
                os.close(write_end)
                try:
                    return forked.become(
                        request,
                        fds,
                        me,
                        forked.Inherited(
                            self.dispositions, self.wire.sock, self.generators, self.program
                        ),
                    )
                except BaseException:
                    traceback.print_exc()
                    os._exit(1)
            try:
                os.write(write_end, str(pid).encode())
            finally:
                os._exit(0)
        os.close(write_end)
        try:
            answer_fork(self.wire, read_end, middle, 5.0, "the generation")
        except OSError:  # the supervisor gave up on this template (a late fork: it leaves,
            _quit()  # its channel closed); so does the template, quietly
        return None


def _stamp_the_rest(stamps: dict[str, preload.Stamp], files: dict[str, str]) -> None:
    """Add every loaded module's file not stamped yet (what the preload pulled in)."""
    for name, module in list(sys.modules.items()):
        origin = preload.module_origin(module)
        if origin and os.path.isabs(origin) and origin not in stamps:
            stamps[origin] = preload.stamp(origin)
            files[origin] = name


def _say(message: str) -> None:
    """One line in the package's log format, without configuring ``logging`` (a generation
    forked from here must not inherit a handler)."""
    with contextlib.suppress(Exception):
        sys.stderr.write(f"[grace_plugins] [template {os.getpid()}] {message}\n")
        sys.stderr.flush()


def _quit() -> NoReturn:
    """Leave without running the libraries' ``atexit`` hooks: those are the generations'."""
    with contextlib.suppress(Exception):
        sys.stdout.flush(), sys.stderr.flush()
    os._exit(0)


def _start_over(state: dict[str, Any]) -> NoReturn:
    """Run the template again in this process (same pid, socket and environment), in a fresh
    interpreter (no thread survives ``exec``) that leaves out ``state["excluded"]``."""
    argv = sys.orig_argv
    boot = next(i for i in range(len(argv) - 1) if argv[i] == "-c" and argv[i + 1] == BOOT)
    os.set_inheritable(int(argv[boot + 3]), True)
    with contextlib.suppress(Exception):
        sys.stdout.flush(), sys.stderr.flush()
    os.execve(sys.executable, [*argv[: boot + 4], json.dumps(state)], _ENVIRON)


def main() -> None:
    """The template's entry point (``BOOT``); ``sys.argv``: [-c, package dir, socket fd] and,
    when the preload starts over, the state it resumes."""
    if sys.path and sys.path[-1] == sys.argv[1]:
        del sys.path[-1]
    sock = socket.socket(fileno=int(sys.argv[2]))
    sock.set_inheritable(False)
    resumed = json.loads(sys.argv[3]) if len(sys.argv) > 3 else None
    job = Template(sock).run(resumed)
    job()
