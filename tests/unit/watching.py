"""Helpers of the watcher's unit tests: sources, saves as editors make them, and waits on
the watcher's fd (``select`` with a deadline; nothing sleeps to synchronise).

"Nothing else was reported" is shown with a sentinel: after the save under test, another
watched file is saved, and the next batch must hold it alone (a save split in two batches, or an
unwanted report, would show up there).
"""

from __future__ import annotations

import os
import queue
import select
import sys
import threading
import time
from pathlib import Path

import pytest

from grace_plugins.debounce import Batch
from grace_plugins.watcher import Watcher
from grace_plugins.watchsources import InotifySource, PollSource, Raw, WatchfilesSource
from grace_plugins.watchspec import WatchSpec

QUIET = 0.1
POLL = 0.05
SOURCES = ["inotify", "watchfiles", "poll"]


def make_source(kind: str):
    if kind == "inotify":
        if not sys.platform.startswith("linux"):
            pytest.skip("inotify is Linux's")
        pytest.importorskip("inotify_simple")
        return InotifySource()
    if kind == "watchfiles":
        pytest.importorskip("watchfiles")
        return WatchfilesSource()
    return PollSource(POLL)


def written(path: Path, content: str = "x = 1\n") -> None:
    """A file as it was before the server started: written a minute ago (a file saved just
    before a spec's ``since`` would be caught up, rightly)."""
    path.write_text(content)
    long_ago = time.time() - 60
    os.utime(path, (long_ago, long_ago))


def make_proj(root: Path) -> Path:
    """A project directory: ``app.py``, ``views.py`` and ``sentinel.py``, written long ago."""
    for name in ("app.py", "views.py", "sentinel.py"):
        written(root / name)
    return root


def next_batch(watcher: Watcher, timeout: float = 10.0) -> Batch:
    """The next non-empty batch, waiting on the watcher's fd at most *timeout* s."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no batch from the watcher ({watcher.name}) in {timeout:g} s")
        select.select([watcher], [], [], left)
        batch = watcher.take()
        if batch:
            return batch


def paths(batch: Batch, root: Path) -> list[str]:
    return [os.path.relpath(p, root) for p in batch.paths]


_saves = iter(range(10**6))


def text() -> str:
    """New content, of a new length each time (a poll compares sizes too)."""
    return "VERSION = " + "'v" + "x" * next(_saves) + "'\n"


def replace_save(path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text())
    os.replace(tmp, path)
    os.chmod(path, 0o644)


def vim_save(path: Path) -> None:
    probe = path.with_name("4913")
    probe.write_text("")
    probe.unlink()
    backup = path.with_name(path.name + "~")
    os.rename(path, backup)
    with open(path, "w") as handle:  # vim's fsync before the close: see the next test
        handle.write(text())
    os.chmod(path, 0o644)
    backup.unlink()


def jetbrains_save(path: Path) -> None:
    tmp = path.with_name(path.name + "___jb_tmp___")
    old = path.with_name(path.name + "___jb_old___")
    tmp.write_text(text())
    os.rename(path, old)
    os.rename(tmp, path)
    old.unlink()


def in_place_save(path: Path) -> None:
    with open(path, "w") as handle:
        handle.write(text())


SAVES = {
    "os.replace": replace_save,
    "vim": vim_save,
    "jetbrains": jetbrains_save,
    "in place": in_place_save,
}


def spec_of(root: Path, *names: str, since: float | None = None, **kwargs) -> WatchSpec:
    return WatchSpec.build([str(root / n) for n in names], since=since, **kwargs)


def watching(watcher: Watcher, spec: WatchSpec, root: Path) -> None:
    """Watch *spec* and wait until it is in force: a file of it saved after ``watch()`` is
    reported (by its event, or by the catch-up if the watches were not set yet)."""
    since = time.time()
    spec = WatchSpec(spec.files, spec.dirs, spec.exclude, since)
    watcher.watch(spec)
    sentinel = root / "sentinel.py"
    assert str(sentinel) in spec.files
    replace_save(sentinel)
    assert paths(next_batch(watcher), root) == ["sentinel.py"]


def assert_nothing_else(watcher: Watcher, root: Path) -> None:
    replace_save(root / "sentinel.py")
    assert paths(next_batch(watcher), root) == ["sentinel.py"]


class FakeSource:
    """A source the test drives: :meth:`push` what :meth:`wait` returns, or make it fail."""

    name = "fake"

    def __init__(self, fail_watch: Exception | None = None) -> None:
        self.fail_watch = fail_watch
        self.raws: queue.Queue[Raw | Exception | None] = queue.Queue()
        self.watched = False
        #: Set while :meth:`wait` waits, once :meth:`watch` was called.
        self.waiting = threading.Event()
        self.closed = False

    def push(self, item: Raw | Exception) -> None:
        self.raws.put(item)

    def watch(self, directories, scan) -> None:
        if self.fail_watch is not None:
            raise self.fail_watch
        self.watched = True

    def wait(self, timeout):
        if self.watched:
            self.waiting.set()
        try:
            item = self.raws.get(timeout=timeout)
        except queue.Empty:
            return Raw([])
        finally:
            self.waiting.clear()
        if isinstance(item, Exception):
            raise item
        return item or Raw([])

    def interrupt(self) -> None:
        self.raws.put(None)

    def close(self) -> None:
        self.closed = True
