"""The warm-start template: a plain interpreter that has imported the libraries, and forks.

The supervisor starts it with the program's interpreter and flags (``python [flags] -c BOOT``).
It imports the *preload set* (what the serving generation imported, except the project's own:
:mod:`grace_plugins.preload`), then answers spawn requests on its private socket: each carries
the command line, environment, working directory and (``SCM_RIGHTS``) the fds of a generation.
It double-forks, so that the generation is re-parented to the supervisor (a child subreaper)
and reaped by it as if it had been spawned; the generation then resets what a fork copies
(signal dispositions and mask, session, fds, environment, working directory, ``random``) and
runs the user's command line in-process with :mod:`runpy`: a cold start with the imports done.
The template configures no logging and refuses to fork with a second thread or a project module.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import importlib
import importlib.abc
import importlib.machinery
import json
import os
import pkgutil  # noqa: F401 - runpy.run_path imports it: known to the template, not new
import runpy
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from grace_plugins import preload
from grace_plugins.preload import Program, program_path0

BOOT = "import sys;sys.path.append(sys.argv[1]);from grace_plugins.template import main;main()"
#: Modules with effects at import (printing, opening a browser): never preloaded.
NEVER_PRELOAD = frozenset({"this", "antigravity"})
MAX_MESSAGE = 64 << 20


class Wire:
    """Newline-delimited JSON over a Unix stream socket, fds riding with a message."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = b""
        self._fds: list[int] = []

    def send(self, message: dict[str, Any], fds: Sequence[int] = ()) -> None:
        data = json.dumps(message, separators=(",", ":")).encode() + b"\n"
        sent = socket.send_fds(self.sock, [data], list(fds)) if fds else 0
        self.sock.sendall(data[sent:])

    def receive(self, timeout: float | None) -> tuple[dict[str, Any], list[int]] | None:
        """The next message and the fds that came with it; ``None`` at EOF.

        :raises TimeoutError: nothing complete within *timeout* seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([self.sock], [], [], left)[0]:
                raise TimeoutError("no answer")
            data, fds, _, _ = socket.recv_fds(self.sock, 1 << 16, 64)
            self._fds.extend(fds)
            if not data:
                return None
            self._buffer += data
            if len(self._buffer) > MAX_MESSAGE:
                raise ValueError("message too long")
        line, _, self._buffer = self._buffer.partition(b"\n")
        fds, self._fds = self._fds, []
        return json.loads(line), fds


class _ProjectGuard(importlib.abc.MetaPathFinder):
    """While preloading, refuse the project's own modules (a library importing project code
    behind our back, as Django's lazy settings do, fails there and is left to the generation)."""

    def __init__(self, roots: list[str], stdlib: list[str]) -> None:
        self.roots = roots
        self.stdlib = stdlib

    def find_spec(self, name: str, path: Any, target: Any = None) -> None:
        origin = getattr(importlib.machinery.PathFinder.find_spec(name, path), "origin", None)
        if origin and preload.is_project_module(name, origin, self.roots, self.stdlib):
            raise ImportError(f"{name} is the project's own: not preloaded")


def _threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


class Template:
    """The template process's state: its socket, what it preloaded, what to reset."""

    def __init__(self, sock: socket.socket) -> None:
        self.wire = Wire(sock)
        self.dispositions = {}
        for sig in signal.valid_signals():
            with contextlib.suppress(OSError, ValueError):
                handler = signal.getsignal(sig)
                if handler is not None:
                    self.dispositions[sig] = handler
        self.roots: list[str] = []
        self.stdlib = preload.stdlib_dirs()

    def run(self) -> Callable[[], None]:
        """Preload, then serve spawn requests; returns (a job to run) only in a generation."""
        got = self.wire.receive(None)
        if got is None:
            sys.exit(0)
        setup = got[0]
        program = Program(**setup["program"])
        cwd = setup["cwd"]
        self.program = program
        base = list(sys.path)
        if not getattr(sys.flags, "safe_path", False) and sys.path and sys.path[0] == "":
            base = base[1:]
            sys.path[0] = program_path0(program, cwd)
        began = time.monotonic()
        try:
            verdict = self.preload(setup["report"], cwd, base, program)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            verdict = {"unsafe": f"the generation's module report is unreadable ({exc})"}
        verdict["ms"] = ms = round((time.monotonic() - began) * 1000)
        try:
            self.wire.send(verdict)  # first: once the line below shows, the supervisor can read it
        except OSError:  # the supervisor is gone, or replaced this template: nothing to say
            sys.exit(0)
        if "unsafe" in verdict:
            _say(f"unusable, upgrades will start cold: {verdict['unsafe']}")
            sys.exit(0)
        left = len(verdict["skipped"])
        _say(f"preloaded {verdict['ready']} modules in {ms} ms ({left} left to generations)")
        while True:
            got = self.wire.receive(None)
            if got is None:
                sys.exit(0)
            job = self.fork(*got)
            if job is not None:
                return job

    def preload(self, report_file: str, cwd: str, base: list[str], program: Program) -> dict:
        with open(report_file) as handle:
            report = json.load(handle)
        if report.get("v") != preload.REPORT_VERSION:
            return {"unsafe": "the generation's module report has another format"}
        modules = [(str(n), o if isinstance(o, str) else None) for n, o in report["modules"]]
        script_dir = program_path0(program, cwd) if program.kind == "script" else None
        self.roots = preload.project_roots(cwd, script_dir, report["path"], base)
        names, project = preload.split_modules(modules, self.roots, self.stdlib)
        origins = dict(modules)
        stamps: dict[str, preload.Stamp] = {}
        files: dict[str, str] = {}
        skipped = []
        guard = _ProjectGuard(self.roots, self.stdlib)
        sys.meta_path.insert(0, guard)
        try:
            for name in names:
                origin = origins.get(name)
                if origin and os.path.isabs(origin):
                    stamps[origin] = preload.stamp(origin)
                    files[origin] = name
                if name in sys.modules:
                    continue
                if name in NEVER_PRELOAD:
                    skipped.append(name)
                    continue
                try:
                    importlib.import_module(name)
                except BaseException:  # noqa: BLE001 - left to the generation
                    skipped.append(name)
                if _threads() > 1:
                    return {"unsafe": f"importing {name} started a thread (forking is unsafe)"}
        finally:
            sys.meta_path.remove(guard)
        pulled = self.project_modules()
        if pulled:
            return {"unsafe": f"preloading pulled in the project's {', '.join(pulled[:3])}"}
        for name, module in list(sys.modules.items()):
            origin = preload.module_origin(module)
            if origin and os.path.isabs(origin) and origin not in stamps:
                stamps[origin] = preload.stamp(origin)
                files[origin] = name
        gc.collect()
        gc.freeze()
        return {
            "ready": len(names) - len(skipped),
            "known": sorted({*names, *project, *sys.modules}),  # what forks will report
            "skipped": skipped,
            "stamps": stamps,
            "files": files,
        }

    def project_modules(self) -> list[str]:
        items = [(n, preload.module_origin(m)) for n, m in list(sys.modules.items())]
        items = [(n, o) for n, o in items if n not in preload.ALWAYS_PROJECT]
        return preload.split_modules(items, self.roots, self.stdlib)[1]

    def fork(self, request: dict[str, Any], fds: list[int]) -> Callable[[], None] | None:
        """Fork a generation for *request*; returns its job in the generation, else None."""
        try:
            problem = None
            if _threads() > 1:
                problem = "the template has more than one thread"
            elif pulled := self.project_modules():
                problem = f"the template holds the project's {', '.join(pulled[:3])}"
            elif len(fds) != len(request["fds"]):
                problem = "the fds did not arrive"
            if problem:
                self.wire.send({"error": problem})
                _close(fds)
                return None
            job = self._double_fork(request, fds)
        except BaseException:
            _close(fds)
            raise
        if job is None:  # in the template: its copies go; in the generation they were moved
            _close(fds)
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
                    return self._become(request, fds, me)
                except BaseException:
                    import traceback

                    traceback.print_exc()
                    os._exit(1)
            try:
                os.write(write_end, str(pid).encode())
            finally:
                os._exit(0)
        os.close(write_end)
        try:
            ready = select.select([read_end], [], [], 5.0)[0]
            data = os.read(read_end, 32) if ready else b""
        finally:
            os.close(read_end)
            os.waitpid(middle, 0)
        if data.isdigit():
            self.wire.send({"pid": int(data)})
        else:
            self.wire.send({"error": "the fork did not report the generation's pid"})
        return None

    def _become(self, request: dict[str, Any], fds: list[int], middle: int) -> Callable[[], None]:
        """In the generation: reset what the fork copied, then hand back the program to run."""
        deadline = time.monotonic() + 2.0
        while os.getppid() == middle and time.monotonic() < deadline:
            time.sleep(0.0005)  # until re-parented to the supervisor (handoff checks getppid)
        os.setsid()
        for sig, handler in self.dispositions.items():
            with contextlib.suppress(OSError, ValueError, TypeError):
                signal.signal(sig, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, {signal.SIGHUP})  # as a spawned generation
        self.wire.sock.close()
        _place_fds(fds, [int(t) for t in request["fds"]])
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        if "random" in sys.modules:
            sys.modules["random"].seed()
        argv = [str(a) for a in request["argv"]]
        sys.orig_argv = argv
        program = self.program
        if not getattr(sys.flags, "safe_path", False) and sys.path:
            sys.path[0] = program_path0(program, request["cwd"])
        return lambda: _run_program(program)


def _close(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _say(message: str) -> None:
    """One line in the package's log format, without configuring ``logging`` (a generation
    forked from here must not inherit a handler)."""
    with contextlib.suppress(Exception):
        sys.stderr.write(f"[grace_plugins] [template {os.getpid()}] {message}\n")
        sys.stderr.flush()


def _place_fds(received: list[int], targets: list[int]) -> None:
    """Put *received* at the numbers *targets* (inheritable, as ``pass_fds`` makes them) and
    close every other fd but 0-2: the template's files are not the generation's."""
    top = max([*received, *targets, 2]) + 1
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, top) for fd in received]
    try:
        open_fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        open_fds = list(range(3, max(high) + 1))
    for fd in open_fds:
        if fd > 2 and fd not in high:
            with contextlib.suppress(OSError):
                os.close(fd)
    for source, target in zip(high, targets, strict=True):
        os.dup2(source, target, inheritable=True)
        os.close(source)


def _run_program(program: Program) -> None:
    if program.kind == "script":
        sys.argv = [program.target, *program.args]
        runpy.run_path(program.target, run_name="__main__")
        return
    main = sys.modules["__main__"]
    for key in [k for k in vars(main) if k != "__builtins__"]:
        delattr(main, key)
    sys.argv = ["-m", *program.args]
    runpy._run_module_as_main(program.target, alter_argv=True)  # type: ignore[attr-defined]


def main() -> None:
    """The template's entry point (``BOOT``); ``sys.argv``: [-c, package dir, socket fd]."""
    if sys.path and sys.path[-1] == sys.argv[1]:
        del sys.path[-1]
    sock = socket.socket(fileno=int(sys.argv[2]))
    job = Template(sock).run()
    job()
