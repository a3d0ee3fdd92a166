"""The template's preload: one top-level import at a time, each atomic and watched.

Python does not undo a failed import: only the module that raised leaves ``sys.modules``; the
submodules its partial run imported stay, without their parent's attribute, and ``import
pkg.sub.leaf`` then fails in every process forked from here. So each top-level import of the
preload is a transaction: :meth:`Preloader.load` snapshots ``sys.modules`` and, when the import
fails or is refused, removes what it left broken (:mod:`.rollback`), and that import is left to
the generations. Refused:

* a project module (a library reading Django's lazy settings imports the project's settings);
* a thread started by ``threading`` (refused before it runs: a fork copies only the calling
  thread, and a thread cannot be undone);
* an fd the import leaves open (a socket, a file): in a generation it would be closed and its
  number reused by another file, that the library's object would write to or close;
* a file of the project read at import (a library's config beside the app): each generation
  must read it as it is then.

Files outside the project that kept imports read are stamped: the template is stale with them.

A thread that started anyway (from C, or ``_thread``) taints the process: the template then
starts its preload again in a fresh interpreter without that import (:mod:`.template`).
Whatever the libraries print while they import is captured, as are exceptions Python would
report as "ignored": the template is quiet; :func:`debug` shows it all when asked for.
"""

from __future__ import annotations

import builtins
import contextlib
import gc
import importlib
import importlib.abc
import importlib.machinery
import io
import os
import pathlib
import socket
import sys
import tempfile
import threading
import traceback
from collections.abc import Mapping, Sequence
from types import FrameType, ModuleType
from typing import Any

from grace_plugins import preload, rollback
from grace_plugins.preload import LeftOut
from grace_plugins.probes import failed_in, importing, open_fds, opened_since, threads

#: Set to 1 to see, on the template's stderr, why each import was left out, with tracebacks,
#: and what the libraries printed while the template imported them.
DEBUG_VAR = "GRACE_PLUGINS_WARM_DEBUG"
_CAPTURED_MAX = 64 << 10


class Refused(BaseException):
    """Raised into a library's import by the template's guards. Not an ``Exception``: a
    library's ``except ImportError`` or ``except Exception`` must not swallow it and carry on
    with a different view of the world than a generation would have."""


def debugging() -> bool:
    return os.environ.get(DEBUG_VAR, "") not in ("", "0")


def debug(message: str) -> None:
    """Write *message* to stderr when :data:`DEBUG_VAR` is set (no ``logging`` configured: a
    generation forked from here must not inherit a handler)."""
    if debugging():
        with contextlib.suppress(Exception):
            for line in message.rstrip("\n").splitlines():
                sys.stderr.write(f"[grace_plugins] [template {os.getpid()}] debug: {line}\n")
            sys.stderr.flush()


def _kind(target: str) -> str:
    return preload.SOCKET if target.startswith("socket:") else preload.OPEN_FILE


class _Guard(importlib.abc.MetaPathFinder):
    """First on ``sys.meta_path`` while preloading: refuses what must be left out."""

    def __init__(self, preloader: Preloader) -> None:
        self.preloader = preloader

    def find_spec(self, name: str, path: Any, target: Any = None) -> None:
        self.preloader.check_import(name, path)


class Preloader:
    """Imports a template's preload set, each top-level import atomic (see the module).

    Use it as a context manager around :meth:`load` calls: it installs the guards and captures
    the output while active, and removes them on exit.
    """

    def __init__(
        self,
        roots: Sequence[str],
        stdlib: Sequence[str],
        excluded: Mapping[str, str],
        settings_module: str | None,
    ) -> None:
        self.roots = list(roots)
        self.stdlib = list(stdlib)
        #: module -> why it is refused: given (a restart), then learnt while preloading.
        self.excluded = dict(excluded)
        self.settings_module = settings_module
        self.left: list[LeftOut] = []
        self.kept = 0
        #: imports that failed in a circular import: entered from the other end (after the
        #: rest), as the program entered it, they may work (:meth:`retry_circular`)
        self.circular: list[str] = []
        #: top-level imports after which the process is unsafe to fork (a live thread, an fd
        #: nothing would close): culprit -> why; the preload must start again without them.
        self.tainted: dict[str, str] = {}
        #: what :func:`debug` shows once the capture ends (it would be captured before).
        self.notes: list[str] = []
        self._top = ""
        self._refusals: list[tuple[str, str]] = []
        self._attempted: list[str] = []
        self._opened: dict[int, str] = {}  # fd -> the module whose import made a socket of it
        self._pulled: list[str] = []  # project modules an import loaded behind the guard
        #: files outside the project that kept imports read: path -> (its stamp, the reader)
        self.read_files: dict[str, preload.Read] = {}
        self._read: dict[str, preload.Read] = {}  # those of the import under way
        self._restore: list[tuple[object, str, object]] = []
        self._saved_fds: list[int] = []
        self._sink: Any = None
        self.active = False  # while an import of the preload runs

    # -- a context: the guards and the capture ------------------------------------------------
    def __enter__(self) -> Preloader:
        self._capture()
        preloader = self

        def start(thread: threading.Thread) -> None:
            culprit = importing(preloader._top, sys._getframe(1))
            preloader.refuse(culprit, preload.THREAD)

        def unraisable(info: Any) -> None:
            with contextlib.suppress(Exception):
                preloader.notes.append(f"importing {preloader._top}: {info.exc_value!r} ignored")

        made = socket.socket.__init__

        def init(sock: socket.socket, *args: Any, **kwargs: Any) -> None:
            made(sock, *args, **kwargs)
            preloader._opened[sock.fileno()] = importing(preloader._top, sys._getframe(1))

        real_open = builtins.open

        def reading(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            if preloader.active:  # a module may keep it (tarfile's ``bltn_open``): inert after
                preloader.check_read(file, mode, sys._getframe(1))
            return real_open(file, mode, *args, **kwargs)

        self._patch(threading.Thread, "start", start)
        self._patch(builtins, "open", reading)
        self._patch(io, "open", reading)  # pathlib's
        if hasattr(pathlib, "_NormalAccessor"):  # Python 3.10's pathlib keeps its own
            self._patch(pathlib._NormalAccessor, "open", staticmethod(reading))
        self._patch(socket.socket, "__init__", init)
        self._patch(sys, "unraisablehook", unraisable)
        self._guard = _Guard(self)
        sys.meta_path.insert(0, self._guard)
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self._guard)
        for owner, name, value in reversed(self._restore):
            setattr(owner, name, value)
        self._restore.clear()
        self._release()

    def _patch(self, owner: object, name: str, value: object) -> None:
        self._restore.append((owner, name, getattr(owner, name)))
        setattr(owner, name, value)

    def _capture(self) -> None:
        """Send fds 1 and 2 to a temporary file (C libraries write there too)."""
        _flush()
        self._sink = tempfile.TemporaryFile()  # noqa: SIM115 - closed by _release
        self._saved_fds = [os.dup(1), os.dup(2)]
        os.dup2(self._sink.fileno(), 1)
        os.dup2(self._sink.fileno(), 2)

    def _release(self) -> None:
        _flush()
        for target, saved in zip((1, 2), self._saved_fds, strict=True):
            os.dup2(saved, target)
            os.close(saved)
        self._saved_fds = []
        self._sink.seek(0)
        printed = self._sink.read(_CAPTURED_MAX).decode("utf-8", "replace")
        self._sink.close()
        if printed.strip():
            self.notes.append(f"what the libraries printed while imported:\n{printed}")
        debug("\n".join(self.notes))

    # -- the guards ---------------------------------------------------------------------------
    def refuse(self, culprit: str, reason: str) -> None:
        """Refuse what *culprit*'s import is doing, for *reason*: raises :class:`Refused`."""
        self._refusals.append((culprit, reason))
        if debugging() and len(self._refusals) == 1:
            ours = ("<frozen importlib", '"<string>"', os.path.dirname(__file__) + os.sep)
            stack = traceback.format_stack(sys._getframe(1))
            where = "".join(e for e in stack if not any(mark in e for mark in ours))
            self.notes.append(f"{culprit} {reason}, here:\n{where}")
        raise Refused(f"{culprit} {reason}: left to the generations")

    def check_import(self, name: str, path: Any) -> None:
        """The guard: refuse an excluded module, or a project module (the importer, usually
        a library reading the settings, is the culprit)."""
        self._attempted.append(name)
        if name in self.excluded:
            self.refuse(name, self.excluded[name])
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None and path is None:  # on a path the program adds itself (flask --app)?
            spec = importlib.machinery.PathFinder.find_spec(name, self.roots)
        origin = getattr(spec, "origin", None)
        if origin and preload.is_project_module(name, origin, self.roots, self.stdlib):
            culprit = importing(self._top, sys._getframe(1))
            self.refuse(culprit, preload.project_reason(name, self.settings_module))

    def check_read(self, file: Any, mode: str, frame: FrameType | None) -> None:
        """The guard on ``open()``: refuse reading a project file; stamp another one read."""
        path, ours = preload.file_read(file, mode, self.roots, self.stdlib)
        if path:
            culprit = importing(self._top, frame)
            if ours:
                self.refuse(culprit, preload.PROJECT_FILE)
            self._read.setdefault(path, (preload.stamp(path), culprit))

    def stamp_reads(self, stamps: dict[str, preload.Stamp], files: dict[str, str]) -> None:
        """Add the files kept imports read to a template's *stamps*, named by their reader."""
        for path, (stamp, reader) in self.read_files.items():
            stamps.setdefault(path, stamp)
            files.setdefault(path, f"a file {reader} read at import")

    # -- one top-level import -----------------------------------------------------------------
    def load(self, name: str) -> bool:
        """Import *name* (and what it imports) or nothing of it; whether it was kept."""
        before = dict(sys.modules)
        fds, running = open_fds(), threads()
        self._top, self._refusals, self._attempted, self._opened = name, [], [], {}
        self._pulled, self._read = [], {}
        error: BaseException | None = None
        try:
            self.active = True
            importlib.import_module(name)
        except BaseException as exc:  # noqa: BLE001 - any failure: left to the generations
            error = exc
        finally:
            self.active = False
        if isinstance(error, ModuleNotFoundError) and error.name == name:
            self.notes.append(f"{name} cannot be imported by name (an extension made it)")
            return False
        why = self._judge(name, before, fds, error)
        if isinstance(error, ImportError) and "partially initialized module" in str(error):
            self.circular.append(name)
        if why is not None:
            self.notes.append(f"left {name} to the generations: {why[0]} {why[1]}")
            if error is not None and not isinstance(error, Refused):
                self.notes.append("".join(traceback.format_exception(error)))
            error = None  # its traceback holds the frames (and objects) the rollback drops
            removed = rollback.undo(before, self._attempted, [why[0], *self._pulled])
            if removed:
                self.notes.append(f"removed what it left broken: {', '.join(removed)}")
            self.left.append(LeftOut(name, *why))
            self._check_closed(fds, why)
        if threads() > running:  # not from threading (refused above): from C, or _thread
            self.tainted.setdefault(name, preload.THREAD)
            self.notes.append(f"importing {name} started a thread: the preload starts again")
        if why is None:
            self.kept += 1
            self.read_files.update(self._read)
        return why is None

    def retry_circular(self) -> None:
        """Import once more what failed in a circular import, now that the rest is imported
        (the report lists a package's modules in an order the program never imported them
        in: ``sqlite3.features`` alone imports ``sqlite3.base``, which needs it whole)."""
        names, self.circular = self.circular, []
        for name in names:
            self.left = [one for one in self.left if one.name != name]
            if name not in sys.modules:
                self.load(name)  # left out again, if it fails again

    def _judge(
        self,
        name: str,
        before: Mapping[str, ModuleType],
        fds: Mapping[int, str],
        error: BaseException | None,
    ) -> tuple[str, str] | None:
        """(culprit, reason) if the import of *name* must be undone, else ``None``."""
        if self._refusals:  # even if the library swallowed the refusal and carried on
            culprit, reason = self._refusals[0]
            self.excluded.setdefault(culprit, reason)  # what imports it again fails at once
            return culprit, reason
        if error is not None:
            return failed_in(error, name), preload.failure_reason(error)
        added = [
            (n, preload.module_origin(m))
            for n, m in sys.modules.items()
            if n not in before and n not in preload.ALWAYS_PROJECT  # __mp_main__: an alias
        ]
        self._pulled = preload.split_modules(added, self.roots, self.stdlib)[1]
        if self._pulled:
            return name, preload.project_reason(self._pulled[0], self.settings_module)
        opened = sorted(opened_since(fds).items())
        if opened:
            fd, target = opened[0]
            return self._opened.get(fd, name), _kind(target)
        return None

    def _check_closed(self, fds: Mapping[int, str], why: tuple[str, str]) -> None:
        """After a rollback, the fds the import opened must be closed with its objects; one
        still open is held by something that outlived it: that taints the process."""
        if why[1] not in (preload.SOCKET, preload.OPEN_FILE):
            return
        gc.collect()
        if opened_since(fds):
            self.tainted.setdefault(why[0], why[1])


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
