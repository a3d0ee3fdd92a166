"""The supervisor's side of the file watcher (its fd, ``take``, ``close``) and what happens
where no event source works: polling, said in one line, with the reason.

No process is started and nothing sleeps to synchronise (see ``tests/unit/watching.py``).
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time

import pytest

from grace_plugins.watcher import Watcher
from grace_plugins.watchsources import Raw, WatchLimit
from tests.unit.watching import (
    POLL,
    QUIET,
    FakeSource,
    make_source,
    next_batch,
    paths,
    replace_save,
    spec_of,
    watching,
)

pytestmark = pytest.mark.timeout(60)


# -- the supervisor's side: fd, take, close ------------------------------------------------------
def open_fds() -> int:
    return len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else -1


def test_take_never_blocks_and_close_releases_everything(proj):
    before = open_fds()
    watcher = Watcher(source=make_source("inotify"), quiet=QUIET, log=lambda line: None)
    assert not watcher.take()
    assert select.select([watcher], [], [], 0)[0] == []
    watching(watcher, spec_of(proj, "app.py", "sentinel.py"), proj)
    assert watcher.close()
    assert watcher.close()  # again: nothing to do
    assert open_fds() == before


def test_a_batch_says_when_it_was_first_heard_and_when_it_was_ready(proj):
    watcher = Watcher(source=make_source("inotify"), quiet=QUIET, log=lambda line: None)
    try:
        watching(watcher, spec_of(proj, "app.py", "sentinel.py"), proj)
        saved = time.monotonic()
        replace_save(proj / "app.py")
        batch = next_batch(watcher)
        taken = time.monotonic()
    finally:
        assert watcher.close()
    assert saved <= batch.first <= batch.ready <= taken
    assert batch.ready - batch.first >= QUIET * 0.9


# -- where no event source works: polling, said in one line ---------------------------------------
def test_polling_when_asked_is_said_in_one_line(proj):
    lines: list[str] = []
    watcher = Watcher(polling=True, interval=POLL, quiet=QUIET, log=lines.append)
    try:
        assert watcher.name == f"polling every {POLL:g} s"
        watching(watcher, spec_of(proj, "app.py", "sentinel.py"), proj)
        assert lines == [f"watching for file changes by polling every {POLL:g} s"]
    finally:
        assert watcher.close()


def test_without_an_event_library_it_polls_and_says_why(proj, monkeypatch):
    for name in ("inotify_simple", "watchfiles", "watchfiles._rust_notify"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails
    lines: list[str] = []
    watcher = Watcher(interval=POLL, quiet=QUIET, log=lines.append)
    try:
        watching(watcher, spec_of(proj, "app.py", "sentinel.py"), proj)
        replace_save(proj / "app.py")
        assert paths(next_batch(watcher), proj) == ["app.py"]
    finally:
        assert watcher.close()
    assert len(lines) == 1
    assert lines[0].startswith(f"watching for file changes by polling every {POLL:g} s (")
    assert "watchfiles is not installed" in lines[0]
    package = "inotify_simple" if sys.platform.startswith("linux") else "watchfiles"
    assert f"pip install {package} (" in lines[0] and "grace_plugins[django]" in lines[0]


@pytest.mark.parametrize(
    "trouble",
    ["watch limit at watch()", "error in wait()"],
)
def test_an_event_source_that_fails_gives_way_to_polling(proj, trouble):
    lines: list[str] = []
    if trouble == "watch limit at watch()":
        fake = FakeSource(fail_watch=WatchLimit(28, "the inotify watch limit is reached"))
    else:
        fake = FakeSource()
        fake.push(RuntimeError("error in underlying watcher"))
    watcher = Watcher(source=fake, interval=POLL, quiet=QUIET, log=lines.append)
    try:
        watching(watcher, spec_of(proj, "app.py", "sentinel.py"), proj)
        replace_save(proj / "app.py")
        assert paths(next_batch(watcher), proj) == ["app.py"]
        assert watcher.name == f"polling every {POLL:g} s"
    finally:
        assert watcher.close()
    assert fake.closed
    assert len(lines) == 1 and lines[0].startswith("watching for file changes by polling")
    assert ("watch limit" if "limit" in trouble else "fake failed: RuntimeError") in lines[0]


def test_events_the_kernel_dropped_are_found_by_looking_at_the_files(proj):
    fake = FakeSource()
    watcher = Watcher(source=fake, quiet=QUIET, log=lambda line: None)
    try:
        watcher.watch(spec_of(proj, "app.py", "sentinel.py"))
        assert fake.waiting.wait(10), "the watcher never waited on its source"
        replace_save(proj / "app.py")  # unheard...
        fake.push(Raw([], lost=True))  # ...the queue overflowed
        assert paths(next_batch(watcher), proj) == ["app.py"]
    finally:
        assert watcher.close()


def test_signals_are_never_delivered_to_the_watchers_thread(proj):
    """The supervisor blocks signals around some steps (a spawn, a re-exec): a signal the
    kernel delivered to the watcher's thread instead would escape that."""
    masks: list[set[int]] = []

    class Recording(FakeSource):
        def wait(self, timeout):
            masks.append(set(signal.pthread_sigmask(signal.SIG_BLOCK, [])))
            return super().wait(timeout)

    fake = Recording()
    watcher = Watcher(source=fake, quiet=QUIET, log=lambda line: None)
    try:
        watcher.watch(spec_of(proj, "app.py", "sentinel.py"))
        assert fake.waiting.wait(10), "the watcher never waited on its source"
    finally:
        assert watcher.close()
    handled = {signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGUSR2}
    assert masks and all(handled <= mask for mask in masks)
