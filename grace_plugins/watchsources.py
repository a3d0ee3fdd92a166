"""Where the supervisor's watcher hears of changes: the OS's events, or polls.

Three sources behind one small interface (:class:`Source`), chosen once by
:func:`open_source`:

* ``inotify`` (Linux, through ``inotify_simple``): one inotify descriptor for the server's life,
  one watch per directory added and removed as the watched set changes (no gap in which a save
  goes unheard), a plain fd in ``select``: no wake-up while nothing changes, and the event as
  soon as the kernel has it;
* ``watchfiles`` (macOS FSEvents/kqueue, or Linux without ``inotify_simple``): Rust's
  ``notify``, through the object uvicorn's reloader uses; it is read every :data:`STEP` s;
* polling: every file's mtime every ``interval`` s (``reloader_interval``), where no event source
  can be had (neither library installed, the inotify limits reached, asked for: ``stat``).

A source reports raw paths; what counts is decided by the watcher (:mod:`.watchspec`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple, Protocol

#: How often the ``watchfiles`` source looks at what its thread gathered (s).
STEP = 0.01

#: What a poll sees of a file: (mtime, size, inode) (a rename over it is seen even within one
#: tick of the mtime clock), or ``None`` if it is gone.
Stamp = tuple[float, int, int] | None
#: {path: stamp}: what a poll (and a catch-up) looks at.
Scan = Callable[[], dict[str, Stamp]]


class Raw(NamedTuple):
    """What a source heard: changed paths; of them, those still open for writing, those
    their writer closed, and those whose only change was their metadata (inotify tells); and
    whether some events were lost (the kernel's queue overflowed: the watcher must look at the
    files themselves)."""

    paths: list[str]
    lost: bool = False
    writing: tuple[str, ...] = ()
    closed: tuple[str, ...] = ()
    touched: tuple[str, ...] = ()


class WatchLimit(OSError):
    """The OS refused more watches (``fs.inotify.max_user_watches``)."""


class Source(Protocol):
    name: str

    def watch(self, directories: Iterable[str], scan: Scan) -> None:
        """Watch these directories from now on (a poll calls *scan* instead). May raise
        :class:`WatchLimit`."""

    def wait(self, timeout: float | None) -> Raw:
        """Block until a change, :meth:`interrupt`, or *timeout* s (``None``: no limit)."""

    def interrupt(self) -> None:
        """Make :meth:`wait` return now (thread-safe; remembered if it is not waiting)."""

    def close(self) -> None:
        """Release the source's descriptors and threads."""


class InotifySource:
    """Linux inotify: directory watches (not recursive) on one descriptor."""

    name = "inotify"

    def __init__(self) -> None:
        from inotify_simple import INotify, flags

        self._flags = flags
        self._mask = (
            flags.MODIFY
            | flags.ATTRIB
            | flags.CLOSE_WRITE
            | flags.MOVED_FROM
            | flags.MOVED_TO
            | flags.CREATE
            | flags.DELETE
            | flags.DELETE_SELF
            | flags.MOVE_SELF
            | flags.ONLYDIR
        )
        #: A file created or written to is open for writing until closed, moved or deleted.
        self._opened = flags.CREATE | flags.MODIFY
        self._ended = flags.CLOSE_WRITE | flags.MOVED_FROM | flags.DELETE
        self._inotify = INotify()  # close-on-exec
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._wd_of: dict[str, int] = {}
        self._dirs_of: dict[int, set[str]] = {}  # a directory and its symlink share a wd

    def watch(self, directories: Iterable[str], scan: Scan) -> None:
        wanted = set(directories)
        for directory in sorted(wanted.difference(self._wd_of)):
            try:
                wd = self._inotify.add_watch(directory, self._mask)
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    raise WatchLimit(exc.errno, "the inotify watch limit is reached") from None
                continue  # gone, not a directory, not readable: nothing to hear there
            self._wd_of[directory] = wd
            self._dirs_of.setdefault(wd, set()).add(directory)
        for directory in set(self._wd_of).difference(wanted):
            wd = self._wd_of.pop(directory)
            names = self._dirs_of.get(wd, set())
            names.discard(directory)
            if not names:
                self._dirs_of.pop(wd, None)
                with contextlib.suppress(OSError):
                    self._inotify.rm_watch(wd)

    def wait(self, timeout: float | None) -> Raw:
        readable, _, _ = select.select([self._inotify, self._wake_r], [], [], timeout)
        if self._wake_r in readable:
            with contextlib.suppress(BlockingIOError):
                while os.read(self._wake_r, 512):
                    pass
        if self._inotify not in readable:
            return Raw([])
        paths: list[str] = []
        writing: dict[str, bool] = {}  # path: still open for writing, after this read
        masks: dict[str, int] = {}  # path: what happened to it in this read
        lost = False
        for event in self._inotify.read(timeout=0):
            if event.mask & self._flags.Q_OVERFLOW:
                lost = True
            elif event.mask & self._flags.IGNORED:  # the directory is gone: so is its watch
                for directory in self._dirs_of.pop(event.wd, set()):
                    self._wd_of.pop(directory, None)
            elif event.mask & self._flags.ISDIR:
                continue  # a directory changes nothing; the files in it do
            else:
                for directory in self._dirs_of.get(event.wd, ()):
                    path = os.path.join(directory, event.name) if event.name else directory
                    paths.append(path)
                    masks[path] = masks.get(path, 0) | event.mask
                    if event.mask & self._opened:
                        writing[path] = True
                    elif event.mask & self._ended:
                        writing[path] = False
        return Raw(
            paths,
            lost,
            tuple(p for p, open_ in writing.items() if open_),
            tuple(p for p, open_ in writing.items() if not open_),
            tuple(p for p, mask in masks.items() if mask == self._flags.ATTRIB),
        )

    def interrupt(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"x")

    def close(self) -> None:
        self._inotify.close()
        os.close(self._wake_r)
        os.close(self._wake_w)


class WatchfilesSource:
    """``watchfiles``' Rust watcher (FSEvents, kqueue, inotify), rebuilt when the watched
    directories change: the new one is watching before the old one is closed."""

    def __init__(self) -> None:
        from watchfiles._rust_notify import RustNotify  # what watchfiles.watch() drives

        self._rust_notify = RustNotify
        self._notify: Any = None
        self._dirs: list[str] = []
        self._stop = threading.Event()
        self.name = "watchfiles"

    def watch(self, directories: Iterable[str], scan: Scan) -> None:
        wanted = sorted(set(directories))
        if wanted == self._dirs and self._notify is not None:
            return
        for _ in range(3):  # a directory removed meanwhile: look again
            present = [d for d in wanted if os.path.isdir(d)]
            try:
                new = self._rust_notify(present, False, False, 0, False, True)
                break
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise WatchLimit(exc.errno or 0, str(exc)) from None
        else:
            raise WatchLimit(0, "watchfiles could not watch the directories")
        old, self._notify, self._dirs = self._notify, new, wanted
        if old is not None:
            old.close()

    def wait(self, timeout: float | None) -> Raw:
        if timeout is not None and timeout <= 0:
            return Raw([])
        if self._notify is None:
            self._stop.wait(timeout)
            self._stop.clear()
            return Raw([])
        step = int(STEP * 1000)
        limit = 0 if timeout is None else max(1, round(timeout * 1000))
        result = self._notify.watch(step, step, limit, self._stop)
        if isinstance(result, str):  # "stop", "timeout" (or "signal", on the main thread)
            self._stop.clear()
            return Raw([])
        # A directory changes nothing (the files in it do); notify does not say which is which.
        return Raw([path for _, path in result if not os.path.isdir(path)])

    def interrupt(self) -> None:
        self._stop.set()

    def close(self) -> None:
        if self._notify is not None:
            self._notify.close()
            self._notify = None


class PollSource:
    """Every *interval* s, the mtime of every watched file (werkzeug's ``stat`` loop, Django's
    ``StatReloader``): slower to notice, but it works on any file system."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = max(0.01, float(interval))
        self.name = f"polling every {self.interval:g} s"
        self._clock = clock
        self._scan: Scan = dict
        self._seen: dict[str, Stamp] = {}
        self._next = 0.0
        self._wake = threading.Event()

    def watch(self, directories: Iterable[str], scan: Scan) -> None:
        self._scan = scan
        self._seen = scan()
        self._next = self._clock() + self.interval

    def wait(self, timeout: float | None) -> Raw:
        now = self._clock()
        until_poll = max(0.0, self._next - now)
        if self._wake.wait(until_poll if timeout is None else min(timeout, until_poll)):
            self._wake.clear()
            return Raw([])
        if self._clock() < self._next:
            return Raw([])
        seen, self._seen = self._seen, self._scan()
        self._next = self._clock() + self.interval
        changed = [p for p in set(seen) | set(self._seen) if seen.get(p) != self._seen.get(p)]
        return Raw(sorted(changed))

    def interrupt(self) -> None:
        self._wake.set()

    def close(self) -> None:
        self._wake.set()


def open_source(polling: bool, interval: float) -> tuple[Source, str]:
    """The best source this machine offers (or a poll, if *polling*), and why no event source
    could be had (``""`` if one was, or a poll was asked for)."""
    if polling:
        return PollSource(interval), ""
    reasons = []
    if sys.platform.startswith("linux"):
        try:
            return InotifySource(), ""
        except ImportError:
            reasons.append("inotify_simple is not installed")
        except OSError as exc:
            reasons.append(f"inotify: {os.strerror(exc.errno) if exc.errno else exc}")
    try:
        return WatchfilesSource(), ""
    except ImportError:
        reasons.append("watchfiles is not installed")
    package = "inotify_simple" if sys.platform.startswith("linux") else "watchfiles"
    hint = (
        f"; for events: pip install {package} (in each server's extra: 'grace_plugins[django]',"
        " '[flask]', '[gunicorn]')"
    )
    return PollSource(interval), "; ".join(reasons) + hint
