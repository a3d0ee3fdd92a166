"""The warm starter's side in the supervisor, event by event, with a fake template: no process.

The fake template is the far end of the real socket pair :class:`~grace_plugins.template.Wire`
speaks over; the test plays it (answers the preload, a fork request, or closes). Cold starts go
to a fake spawner that records them. What is checked: a spawn never blocks (the fork's answer
is an outcome read later from the template's socket), and whatever goes wrong is a cold start
with one log line.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time

import pytest

from grace_plugins import warm, warm_templates
from grace_plugins.process import ChildProcess, Spawner, SpawnRequest, StartAgainCold, Started
from grace_plugins.template import Wire
from grace_plugins.template_process import TemplateProcess

pytestmark = pytest.mark.timeout(20)


#: Above the largest pid Linux hands out (``pid_max`` is at most 2**22): a kill or killpg the
#: code under test sends a fake process can never reach a real one.
NO_PID = 1 << 22


class FakeProcess:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        self.returncode = -9 if self.returncode is None else self.returncode
        return self.returncode


class ColdSpawner(Spawner):
    def __init__(self) -> None:
        self.started: list[int] = []

    def spawn(self, request):
        self.started.append(request.number)
        return Started(request.number, FakeProcess(NO_PID + 7000 + request.number))  # type: ignore[arg-type]


class Templates:
    """Stands in for ``start_template``: each template is a fake process and the test's end of
    its socket (``self.peers``)."""

    def __init__(self) -> None:
        self.peers: list[Wire] = []
        self.sockets: list[socket.socket] = []
        self.seeds: list[str | None] = []  # the seed each template was told of

    def __call__(self, program, argv, env, cwd, report, seed=None) -> TemplateProcess:
        self.seeds.append(seed)
        ours, theirs = socket.socketpair()
        self.sockets += [ours, theirs]
        peer = Wire(theirs)
        self.peers.append(peer)
        process = FakeProcess(NO_PID + 6000 + len(self.peers))
        template = TemplateProcess(process, Wire(ours), argv, time.monotonic(), report=report)  # type: ignore[arg-type]
        template.wire.send({"report": report})  # as start_template tells it what to preload
        assert peer.receive(5)[0]["report"] == report
        return template

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


@pytest.fixture
def setup(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    templates = Templates()
    monkeypatch.setattr(warm_templates, "start_template", templates)
    sources: dict[object, object] = {}
    cold = ColdSpawner()
    spawner = warm.WarmSpawner(logging.getLogger("test-warm"), argv_len=1, cold=cold)
    spawner.attach(sources.__setitem__, lambda fileobj: sources.pop(fileobj, None))
    caplog.set_level(logging.INFO, "test-warm")
    yield spawner, templates, cold, sources
    spawner.close()
    templates.close()


def request(number: int, tmp_path, fds=(), cold=False) -> SpawnRequest:
    script = str(tmp_path / "app.py")
    return SpawnRequest(
        number, ["python-unused", script], {"A": "1"}, list(fds), str(tmp_path), cold
    )


def read(sources, spawner) -> list:
    """What the loop would get from the spawner's sources now (each reader once)."""
    out: list = []
    for reader in list(sources.values()):
        out += reader()  # type: ignore[operator]
    return out


def warm_up(spawner, templates, sources, tmp_path, preloaded_file=None) -> TemplateProcess:
    """First generation started cold, its report read, the template ready."""
    assert spawner.spawn(request(1, tmp_path)) is not None  # the first one starts cold
    built = len(templates.peers)
    with open(spawner.reports.path, "w") as handle:
        json.dump({"v": 1, "modules": [["json", None]], "path": [], "cwd": str(tmp_path)}, handle)
    spawner.refresh()
    assert len(templates.peers) == built + 1, "the report builds a template"
    stamps = {}
    if preloaded_file is not None:
        info = os.stat(preloaded_file)
        stamps[str(preloaded_file)] = [info.st_mtime_ns, info.st_size]
    answer = {"ready": 1, "known": ["json"], "skipped": [], "ms": 5, "files": {}}
    templates.peers[-1].send({**answer, "stamps": stamps})
    assert read(sources, spawner) == []
    assert spawner.templates.ready is not None
    return spawner.templates.ready


def test_a_fork_is_answered_later_on_the_templates_socket(setup, tmp_path, monkeypatch):
    spawner, templates, cold, sources = setup
    monkeypatch.setattr(warm.sys, "executable", "python-unused")
    warm_up(spawner, templates, sources, tmp_path)
    a, b = socket.socketpair()
    try:
        assert spawner.spawn(request(2, tmp_path, fds=[a.fileno()])) is None  # no waiting
        assert spawner.deadline() == pytest.approx(time.monotonic() + warm.FORK_TIMEOUT, abs=1)
        message, fds = templates.peers[0].receive(5)
        assert message["argv"] == ["python-unused", str(tmp_path / "app.py")]
        assert len(fds) == 1  # the fd rode along (SCM_RIGHTS)
        for fd in fds:
            os.close(fd)
        assert read(sources, spawner) == []  # nothing said yet
        templates.peers[0].send({"pid": 4242})
        (outcome,) = read(sources, spawner)
    finally:
        a.close()
        b.close()
    assert outcome == Started(2, ChildProcess(4242), warm=True) and outcome.warm
    assert outcome.process.pid == 4242 and cold.started == [1]
    assert spawner.deadline() is None


def test_a_refused_or_unanswered_fork_starts_cold(setup, tmp_path, monkeypatch, caplog):
    spawner, templates, cold, sources = setup
    monkeypatch.setattr(warm.sys, "executable", "python-unused")
    warm_up(spawner, templates, sources, tmp_path)
    assert spawner.spawn(request(2, tmp_path)) is None
    templates.peers[0].send({"error": "the template has more than one thread"})
    (outcome,) = read(sources, spawner)
    assert outcome.number == 2 and not outcome.warm and cold.started == [1, 2]
    assert "the template refused to fork: the template has more than one thread" in caplog.text
    assert spawner.templates.ready is None  # discarded: the next report builds another
    warm_up_again = warm_up(spawner, templates, sources, tmp_path)
    assert spawner.spawn(request(4, tmp_path)) is None
    assert spawner.expire(time.monotonic()) == []  # not due yet
    # a late template may still fork it: the loop starts it again, cold, on a new channel
    assert spawner.expire(time.monotonic() + warm.FORK_TIMEOUT + 1) == [StartAgainCold(4)]
    assert f"did not fork within {warm.FORK_TIMEOUT:g} s" in caplog.text
    assert warm_up_again.wire.sock.fileno() == -1  # stopped


def test_a_template_that_dies_with_a_fork_owed_starts_it_cold(setup, tmp_path, monkeypatch):
    spawner, templates, cold, sources = setup
    monkeypatch.setattr(warm.sys, "executable", "python-unused")
    template = warm_up(spawner, templates, sources, tmp_path)
    assert spawner.spawn(request(2, tmp_path)) is None
    assert template.pid in spawner.pids()
    template.process.returncode = 1  # type: ignore[misc]
    assert spawner.reap() == [StartAgainCold(2)]
    assert spawner.pids() == set() and cold.started == [1]


def test_the_answer_to_a_given_up_fork_is_not_the_next_ones(setup, tmp_path, monkeypatch):
    spawner, templates, cold, sources = setup
    monkeypatch.setattr(warm.sys, "executable", "python-unused")
    warm_up(spawner, templates, sources, tmp_path)
    assert spawner.spawn(request(2, tmp_path)) is None
    spawner.cancel(2)  # given up (a stop, a short ready timeout) before the template answered
    assert spawner.spawn(request(3, tmp_path)) is None
    templates.peers[0].send({"pid": 4242})  # generation 2's fork, late
    assert read(sources, spawner) == []
    templates.peers[0].send({"pid": 4343})
    assert read(sources, spawner) == [Started(3, ChildProcess(4343), warm=True)]


def test_a_changed_preloaded_file_starts_cold_and_names_it(setup, tmp_path, monkeypatch, caplog):
    spawner, templates, cold, sources = setup
    monkeypatch.setattr(warm.sys, "executable", "python-unused")
    lib = tmp_path / "somelib.py"
    lib.write_text("X = 1\n")
    warm_up(spawner, templates, sources, tmp_path, preloaded_file=lib)
    lib.write_text("X = 22\n")
    outcome = spawner.spawn(request(2, tmp_path))
    assert outcome is not None and not outcome.warm
    assert "changed on disk" in caplog.text and str(lib) in caplog.text


def test_a_cold_request_and_an_unusable_template_say_why(setup, tmp_path, monkeypatch, caplog):
    spawner, templates, cold, sources = setup
    monkeypatch.setattr(warm.sys, "executable", "python-unused")
    spawner.spawn(request(1, tmp_path))
    with open(spawner.reports.path, "w") as handle:
        json.dump({"v": 1, "modules": [["json", None]], "path": [], "cwd": ""}, handle)
    spawner.refresh()
    outcome = spawner.spawn(request(2, tmp_path))
    assert outcome is not None and "the template is still importing" in caplog.text
    templates.peers[0].send({"unsafe": "importing x started a thread"})
    assert read(sources, spawner) == []
    spawner.spawn(request(3, tmp_path))
    assert "the template is unusable: importing x started a thread" in caplog.text
    caplog.clear()
    outcome = spawner.spawn(request(4, tmp_path, cold=True))  # a retry after a warm failure
    assert outcome is not None and cold.started[-1] == 4 and "cold" not in caplog.text


def test_a_generation_that_imported_more_grows_the_template_in_place(setup, tmp_path, monkeypatch):
    """The template imports what the generation's report adds, in place (the generations it
    forked keep sharing its pages); its answer comes among its fork answers."""
    spawner, templates, cold, sources = setup
    monkeypatch.setattr(warm.sys, "executable", "python-unused")
    old = warm_up(spawner, templates, sources, tmp_path)
    with open(spawner.reports.path, "w") as handle:  # a generation imported something new
        modules = [["json", None], ["csv", None]]
        json.dump({"v": 1, "modules": modules, "path": [], "cwd": ""}, handle)
    spawner.refresh()
    assert len(templates.peers) == 1, "no new template"
    assert templates.peers[0].receive(5)[0] == {"grow": spawner.reports.path}
    assert spawner.spawn(request(2, tmp_path)) is None  # the fork request waits behind it
    templates.peers[0].receive(5)
    grown = {"known": ["json", "csv"], "stamps": {}, "files": {}, "left": [], "added": ["csv"]}
    templates.peers[0].send({"grown": {**grown, "ms": 7}})
    templates.peers[0].send({"pid": 4343})
    outcomes = read(sources, spawner)
    assert [o.process.pid for o in outcomes] == [4343]
    assert spawner.templates.ready is old and "csv" in old.known
    assert spawner.templates.covers(frozenset({"json", "csv"}))
    spawner.refresh()  # the same report again: nothing more to import
    with pytest.raises(TimeoutError):
        templates.peers[0].receive(0.1)


def test_a_template_that_cannot_grow_is_dropped(setup, tmp_path, monkeypatch, caplog):
    spawner, templates, cold, sources = setup
    monkeypatch.setattr(warm.sys, "executable", "python-unused")
    warm_up(spawner, templates, sources, tmp_path)
    with open(spawner.reports.path, "w") as handle:
        json.dump({"v": 1, "modules": [["json", None], ["csv", None]], "path": []}, handle)
    spawner.refresh()
    templates.peers[0].receive(5)
    templates.peers[0].send({"grown": {"unsafe": "csv started a thread at import"}})
    assert read(sources, spawner) == []
    assert spawner.templates.ready is None
    assert "could not grow: csv started a thread" in caplog.text
    assert len(templates.peers) == 2, "a new template, of the generation's modules, at once"
    started = spawner.spawn(request(2, tmp_path))
    assert started is not None and cold.started[-1] == 2  # cold, until it is ready


def test_a_verdict_read_in_parts_is_not_taken_for_an_exit():
    """A big verdict (every module and file it stands for) may be in the socket only in part
    when the supervisor reads: that is "not yet", never "it exited" (a loaded machine made a
    usable template look dead, and the upgrade started cold)."""
    ours, theirs = socket.socketpair()
    try:
        template = TemplateProcess(FakeProcess(NO_PID + 6000), Wire(ours), [], time.monotonic())  # type: ignore[arg-type]
        answer = {"files": {}, "stamps": {}, "known": [f"module{n}" for n in range(5000)]}
        line = json.dumps(answer).encode() + b"\n"
        theirs.sendall(line[:1000])
        with pytest.raises(TimeoutError):
            template.verdict()
        theirs.sendall(line[1000:])
        assert template.verdict() is None  # ready
        assert len(template.known) == 5000
    finally:
        ours.close()
        theirs.close()
