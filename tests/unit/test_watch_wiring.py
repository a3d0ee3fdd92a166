"""The file watcher as one more input of the supervisor: the rules for what is watched, the
``watch`` lines over the channel, a generation's reporter, and the loop with a fake watcher.
No process is started."""

from __future__ import annotations

import os
import signal
import sys
import threading

import pytest

from grace_plugins import actions as act
from grace_plugins.channel import MAX_LINE, Channel, parse_watch, watch_message
from grace_plugins.debounce import Batch
from grace_plugins.watch_report import WatchReporter
from grace_plugins.watchspec import WatchSpec
from tests.unit.test_rules import Driver, kinds, lines, spawned
from tests.unit.test_supervisor import FakeSpawner, feed, make, run_until

pytestmark = pytest.mark.timeout(20)

LOADED = WatchSpec.build(["/p/app.py", "/p/views.py"], since=1.0)
TRIED = WatchSpec.build(["/p/pages.py"], [("/p", "*.py")], since=2.0)


# -- the rules ------------------------------------------------------------------------------------
def test_the_serving_generation_says_what_is_watched():
    d = Driver().serving()
    (watch,) = kinds(d.feed(act.WatchReport(d.now, 1, LOADED)), act.Watch)
    assert watch.spec == LOADED and watch.what == "what generation 1 loaded"


def test_what_a_failed_generation_tried_is_watched_too_until_one_serves():
    d = Driver().serving()
    d.feed(act.WatchReport(d.now, 1, LOADED))
    d.advance(2)
    d.signal(signal.SIGHUP)
    (watch,) = kinds(d.feed(act.WatchReport(d.now, 2, TRIED)), act.Watch)
    assert watch.spec.files == LOADED.files | TRIED.files and watch.spec.dirs == TRIED.dirs
    d.exit(2, 1)  # rolled back: generation 1 serves, and both stay watched
    d.advance(2)
    d.signal(signal.SIGHUP)
    d.ready(3)
    (watch,) = kinds(d.feed(act.WatchReport(d.now, 3, LOADED)), act.Watch)
    assert watch.spec == LOADED  # generation 3 serves: its files only
    assert d.feed(act.WatchReport(d.now, 2, TRIED)) == []  # old news


def test_a_report_that_cannot_be_read_is_said_once():
    d = Driver().serving()
    out = d.feed(act.WatchReport(d.now, 1, None, "watch spec is not JSON"))
    assert lines(out) == [
        "the file watcher cannot use a generation's report: watch spec is not JSON"
    ]
    assert d.feed(act.WatchReport(d.now, 1, None, "again")) == []


def test_a_save_is_an_upgrade_like_a_hup_and_says_how_long_to_new_code():
    d = Driver().serving()
    d.advance(2)
    saved = d.now - 0.03
    out = d.feed(act.FilesChanged(d.now, ("/p/app.py", "/p/views.py"), saved))
    assert spawned(out) == [2]
    assert lines(out) == [
        "upgrade started (file changed: /p/app.py (and 1 more)): generation 2 (pid 1002)"
    ]
    d.now += 0.05
    line = lines(d.ready(2))[0]
    assert line.endswith(
        "the saved change is served 80 ms after the save (30 ms to hear it, 50 ms to start and"
        " be ready)"
    )
    assert spawned(d.feed(act.FilesChanged(d.now, ("/p/app.py",), d.now))) == []  # paced


# -- the channel ----------------------------------------------------------------------------------
def test_a_watch_line_of_tens_of_kilobytes_crosses_the_channel_and_a_monster_is_dropped():
    ours, theirs = Channel.pair()
    ours.sock.setblocking(False)
    big = WatchSpec.build([f"/p/module_{n}.py" for n in range(3000)], since=5.0)
    sender = threading.Thread(target=lambda: Channel(theirs).send(watch_message(big.encode())))
    sender.start()
    got: list[str] = []
    while not got:
        got += ours.receive() or []
    sender.join(5)
    (line,) = got
    encoded = parse_watch(line)
    assert encoded is not None and WatchSpec.decode(encoded) == big
    assert parse_watch("watcher 1") is None and parse_watch("watch") is None
    ours._lines(b"x" * (MAX_LINE + 10))  # a line past the limit is dropped whole...
    assert ours._lines(b"tail\nready\n") == ["ready"]  # ...never cut into another meaning
    ours.close()
    theirs.close()


def test_what_an_exited_generation_said_last_is_read_whole():
    ours, theirs = Channel.pair()
    ours.sock.setblocking(False)
    theirs.sendall(b"ready\n" + watch_message(LOADED.encode()).encode() + b"\n")
    theirs.close()
    lines_read, ended = ours.receive_rest()
    assert ended and lines_read[0] == "ready" and parse_watch(lines_read[1]) is not None
    ours.close()


# -- a generation's reporter ----------------------------------------------------------------------
def test_the_reporter_sends_once_ready_again_when_modules_grow_and_what_a_failure_tried():
    sent: list[str] = []
    arrived = threading.Event()
    specs = iter([LOADED, TRIED])

    def send(line: str) -> None:
        sent.append(line)
        arrived.set()

    reporter = WatchReporter(
        send, lambda since: next(specs), 3.0, extra_files=["/p/extra.cfg"], recheck=0.02
    )
    reporter.start()
    assert arrived.wait(5)
    arrived.clear()
    sys.modules["grace_test_new_module"] = type(sys)("grace_test_new_module")
    try:
        assert arrived.wait(5)  # more modules: the spec changed, sent again
    finally:
        del sys.modules["grace_test_new_module"]
        reporter.stop()
        reporter._thread.join(5)
    assert [WatchSpec.decode(parse_watch(s) or "") for s in sent] == [LOADED, TRIED]
    try:
        raise SyntaxError("bad", (os.path.abspath(__file__), 1, 1, "x"))
    except SyntaxError as exc:
        reporter.tried(exc)
    tried = WatchSpec.decode(parse_watch(sent[-1]) or "")
    assert os.path.abspath(__file__) in tried.files and "/p/extra.cfg" in tried.files
    assert tried.since == 3.0


# -- the loop -------------------------------------------------------------------------------------
class FakeWatcher:
    """The watcher's face to the loop: a pipe made readable by :meth:`saved`."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        self.batch = Batch()
        self.watched: list[WatchSpec] = []
        self.closed = False

    def fileno(self) -> int:
        return self.r

    def saved(self, *paths: str) -> None:
        self.batch = Batch(paths, 1.0, 1.0)
        os.write(self.w, b"x")

    def take(self) -> Batch:
        os.read(self.r, 64)
        batch, self.batch = self.batch, Batch()
        return batch

    def watch(self, spec: WatchSpec) -> None:
        self.watched.append(spec)

    def close(self) -> bool:
        self.closed = True
        os.close(self.r)
        os.close(self.w)
        return True


def test_the_loop_watches_what_generations_report_and_upgrades_on_a_save(listener):
    watcher = FakeWatcher()
    spawner = FakeSpawner()
    sup, _ = make(listener, spawner, upgrade_interval=0.0)
    sup.watcher = watcher  # what make() cannot pass
    sup._selector.register(watcher.fileno(), 1, sup._read_watcher)
    sup.effects.watcher = watcher  # type: ignore[assignment]
    feed(sup, act.Begin(sup.now()))
    run_until(sup, lambda: sup.rules.gens.current is not None, "generation 1 ready")
    first = spawner.spawned[0][3]
    first.channel.sendall(watch_message(LOADED.encode()).encode() + b"\n")
    run_until(sup, lambda: watcher.watched, "the watched set")
    assert watcher.watched == [LOADED]
    watcher.saved("/p/app.py")
    run_until(sup, lambda: sup.rules.gens.current.number == 2, "generation 2 ready")
    feed(sup, act.SignalEvent(sup.now(), signal.SIGTERM))
    run_until(sup, lambda: sup.rules.finished, "the stop")
    sup.close()
    assert watcher.closed
