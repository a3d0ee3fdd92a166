"""The supervisor's file watcher: one for the server's whole life, woken by the OS's events.

The supervisor imports no project code, so the generations tell it what they loaded (a
:class:`~grace_plugins.watchspec.WatchSpec`), and :meth:`Watcher.watch` makes that the watched
set. A thread waits on the event source (:mod:`.watchsources`), keeps the changes that count
(:class:`~grace_plugins.watchspec.Matcher`), lets a save's burst of events settle
(:class:`~grace_plugins.watchspec.Debounce`), and then makes :meth:`Watcher.fileno` readable:
one more selector source of the supervisor's loop, which calls :meth:`Watcher.take`.

A save must never be lost, including one made while a generation loads: the watches for a new
spec are set first, then every file is looked at once, and a file saved since the spec's
``since`` (when that generation began loading) is reported at once. A file already reported
at the same mtime is not reported again (the old watches may have heard of it already).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable

from grace_plugins.debounce import LONGEST, QUIET, Batch, Debounce
from grace_plugins.log import get_logger
from grace_plugins.watchsources import (
    PollSource,
    Raw,
    Scan,
    Source,
    Stamp,
    WatchLimit,
    open_source,
)
from grace_plugins.watchspec import (
    SCRATCH_DIRS,
    Matcher,
    WatchSpec,
    catch_up,
    excluded,
)

#: Directories that hold installed packages, never the project's source.
INSTALLED_DIRS = frozenset({"site-packages", "dist-packages", "node_modules"})
#: At most this many directories are watched below one glob's directory (``**``).
MAX_DIRECTORIES = 4096
#: How long :meth:`Watcher.close` waits for the thread (a poll may be in a slow ``stat``).
CLOSE_TIMEOUT = 2.0


class Watcher:
    """Watches what the generations loaded; readable when a save is over.

    :param polling: poll the files' mtimes instead of listening to the OS (werkzeug's
        ``reloader_type="stat"``); polling is also the fallback where no event source works.
    :param interval: seconds between two polls (``reloader_interval``).
    :param log: where the one-line announcements go (the package logger's ``info``).
    :param source: the event source, for tests (default: the best one here).
    """

    def __init__(
        self,
        *,
        polling: bool = False,
        interval: float = 1.0,
        quiet: float = QUIET,
        longest: float = LONGEST,
        log: Callable[[str], None] | None = None,
        source: Source | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._log = log or get_logger().info
        self._interval = interval
        if source is None:
            source, why = open_source(polling, interval)
            self._announce(source, why)
        self._source = source
        self._debounce = Debounce(quiet, longest)
        self._clock, self._wall = clock, wall
        self._lock = threading.Lock()
        self._pending: WatchSpec | None = None
        self._closing = False
        self._ready = Batch()
        self._ready_r, self._ready_w = os.pipe()
        os.set_blocking(self._ready_r, False)
        os.set_blocking(self._ready_w, False)
        self._matcher = Matcher(WatchSpec())
        self._scan: Scan = dict
        self._reported: dict[str, float] = {}
        self._thread = threading.Thread(target=self._run, name="grace-watcher", daemon=True)
        self._thread.start()

    # -- the supervisor's side ------------------------------------------------------------------
    @property
    def name(self) -> str:
        """How it hears of changes: ``inotify``, ``watchfiles``, ``polling every 1 s``."""
        return self._source.name

    def fileno(self) -> int:
        """Readable once a save is over (its batch is ready for :meth:`take`)."""
        return self._ready_r

    def take(self) -> Batch:
        """The ready batches' changed paths, merged (an empty batch if none). Never blocks."""
        with contextlib.suppress(BlockingIOError):
            while os.read(self._ready_r, 512):  # first the fd, then the batch: no lost wake-up
                pass
        with self._lock:
            batch, self._ready = self._ready, Batch()
        return batch

    def watch(self, spec: WatchSpec) -> None:
        """Watch *spec* from now on, instead of what was watched. Thread-safe; does not block
        (the watcher thread sets the watches and looks at the files)."""
        with self._lock:
            self._pending = spec
            if not self._closing:
                self._source.interrupt()

    def close(self, timeout: float = CLOSE_TIMEOUT) -> bool:
        """Stop watching and release the descriptors; blocks at most *timeout* s. Returns
        False if the thread did not stop in time (its descriptors are then left open, never
        closed under it)."""
        with self._lock:
            if self._closing:
                return not self._thread.is_alive()
            self._closing = True
            self._source.interrupt()
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._log(f"the file watcher did not stop within {timeout:g} s")
            return False
        self._source.close()
        os.close(self._ready_r)
        os.close(self._ready_w)
        return True

    # -- the thread -----------------------------------------------------------------------------
    def _run(self) -> None:
        # Signals are the loop's: a process-directed signal must never be delivered to this
        # thread (nor to the threads an event library starts from it), where the supervisor's
        # blocked sections would not hold it back.
        if hasattr(signal, "pthread_sigmask"):
            signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        try:
            while True:
                with self._lock:
                    if self._closing:
                        return
                    spec, self._pending = self._pending, None
                if spec is not None:
                    self._apply(spec)
                self._step()
        except Exception as exc:  # never take the supervisor down; say it once
            self._log(f"the file watcher stopped: {type(exc).__name__}: {exc}")

    def _step(self) -> None:
        heard_from = self._wall()
        try:
            raw = self._source.wait(self._debounce.wait(self._clock()))
        except Exception as exc:  # an event source that fails: poll from now on
            self._fall_back(f"{self._source.name} failed: {type(exc).__name__}: {exc}")
            raw = Raw([], lost=True)
        now = self._clock()
        if raw.lost:  # the kernel dropped events: look at the files saved meanwhile
            self._debounce.add(self._saved_since(heard_from), now)
        changed = self._matcher.changed
        paths = changed(raw.paths)
        missing = [path for path in paths if not os.path.exists(path)]
        self._debounce.add(
            paths, now, changed(raw.writing), changed(raw.closed), missing, changed(raw.touched)
        )
        self._publish(self._debounce.due(now))

    def _apply(self, spec: WatchSpec) -> None:
        """Watch *spec*: set the watches first, then look at every file once."""
        aliases = _symlinked(spec.files)
        directories, globbed = _directories(spec, self._log)
        directories.update(os.path.dirname(real) for real in aliases)
        self._matcher = Matcher(spec, aliases)
        matcher = self._matcher
        self._scan = lambda: _stamps(spec.files, globbed, matcher)
        try:
            self._source.watch(sorted(directories), self._scan)
        except Exception as exc:  # an event source that refuses: poll from now on
            if isinstance(exc, WatchLimit):
                why = f"{exc.strerror or exc}: fs.inotify.max_user_watches is too low"
            else:
                why = f"{self._source.name} failed: {type(exc).__name__}: {exc}"
            self._fall_back(why)
            self._source.watch(sorted(directories), self._scan)
        mtimes = _mtimes(self._scan())
        self._reported = {p: m for p, m in self._reported.items() if p in mtimes}
        self._debounce.add(catch_up(spec, mtimes, self._reported, self._wall()), self._clock())

    def _saved_since(self, moment: float) -> list[str]:
        mtimes = _mtimes(self._scan())
        return catch_up(WatchSpec(since=moment), mtimes, self._reported, self._wall())

    def _fall_back(self, why: str) -> None:
        source = PollSource(self._interval)
        with self._lock:
            old, self._source = self._source, source
        with contextlib.suppress(Exception):
            old.close()
        self._announce(source, why)
        source.watch((), self._scan)

    def _publish(self, batch: Batch) -> None:
        """Make *batch* ready, less what was already reported as it is now: a save both heard
        and caught up on (the watches of a new spec set just before it, the look at the files
        just after) is one change, not two."""
        fresh = []
        for path in batch.paths:
            try:
                mtime: float | None = os.stat(path).st_mtime
            except OSError:
                mtime = None
            if mtime is None or self._reported.get(path) != mtime:
                fresh.append(path)
            if mtime is not None:
                self._reported[path] = mtime
        if not fresh:
            return
        batch = Batch(tuple(fresh), batch.first, batch.ready)
        with self._lock:
            self._ready = self._ready + batch
            if self._closing:
                return
            with contextlib.suppress(BlockingIOError):  # full: it is readable anyway
                os.write(self._ready_w, b"x")

    def _announce(self, source: Source, why: str) -> None:
        verb = "by" if isinstance(source, PollSource) else "with"
        self._log(f"watching for file changes {verb} {source.name}" + (f" ({why})" if why else ""))


# -- the file system, as the watcher needs it ----------------------------------------------------
def _symlinked(files: Iterable[str]) -> dict[str, str]:
    """{real file: spec path} for the files that are symlinks: a save changes the target,
    in a directory the spec may not name."""
    found = {}
    for path in files:
        if os.path.islink(path):
            found[os.path.realpath(path)] = path
    return found


def _directories(spec: WatchSpec, log: Callable[[str], None]) -> tuple[set[str], list[str]]:
    """(every directory to watch, those that hold glob matches): the files' parents, each
    glob's directory and, for ``**`` globs, the directories below it (caches and version
    control left out), at most :data:`MAX_DIRECTORIES` per glob."""
    directories = set(spec.directories())
    globbed: list[str] = []
    for root, recursive in spec.directories().items():
        if not any(d.path == root for d in spec.dirs):
            continue
        globbed.append(root)
        if not recursive:
            continue
        below = _walk(root, spec.exclude)
        if len(below) >= MAX_DIRECTORIES:
            log(f"watching the first {MAX_DIRECTORIES} directories under {root} only")
        directories.update(below)
        globbed.extend(below)
    return directories, globbed


def _walk(root: str, exclude: Iterable[str] = ()) -> list[str]:
    """The directories below *root*, less caches, version control, installed environments (a
    virtual environment inside the project: as werkzeug's stat reloader, never scanned) and
    what *exclude* leaves out whole (``/project/build/*``)."""
    found: list[str] = []
    for parent, subdirs, _ in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if _scanned(os.path.join(parent, d), exclude))
        if parent != root:
            found.append(parent)
        if len(found) >= MAX_DIRECTORIES:
            break
    return found


def _scanned(directory: str, exclude: Iterable[str]) -> bool:
    if os.path.basename(directory) in SCRATCH_DIRS | INSTALLED_DIRS:
        return False
    if os.path.exists(os.path.join(directory, "pyvenv.cfg")):
        return False
    return not excluded(os.path.join(directory, ""), exclude)


def _stamps(files: Iterable[str], globbed: Iterable[str], matcher: Matcher) -> dict[str, Stamp]:
    """{path: (mtime, size, inode), or None if gone} for the spec's files and for what its
    globs match now."""
    found: dict[str, Stamp] = {}
    for path in files:
        try:
            info = os.stat(path)
        except OSError:
            found[path] = None
        else:
            found[path] = (info.st_mtime, info.st_size, info.st_ino)
    for directory in globbed:
        with contextlib.suppress(OSError), os.scandir(directory) as entries:
            for entry in entries:  # a directory changes nothing; the files in it do
                if not entry.is_dir() and matcher.match(entry.path) is not None:
                    with contextlib.suppress(OSError):
                        info = entry.stat()
                        found[entry.path] = (info.st_mtime, info.st_size, info.st_ino)
    return found


def _mtimes(stamps: dict[str, Stamp]) -> dict[str, float | None]:
    return {path: None if stamp is None else stamp[0] for path, stamp in stamps.items()}
