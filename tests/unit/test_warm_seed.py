"""A program's seed (the module report of its last usable template) and the first generation
it makes warm, with the fake template of ``test_warm_spawner``: no process."""

from __future__ import annotations

import json
import logging
import os
import sys
import time

import pytest

from grace_plugins import first_wait, preload, warm, warm_seed, warm_templates
from tests.unit.test_warm_spawner import ColdSpawner, Templates, read, request, warm_up

pytestmark = pytest.mark.timeout(20)

ARGV = ["python", "app.py"]
ENV = {"DJANGO_SETTINGS_MODULE": "site.settings", "TERM": "xterm"}


@pytest.fixture
def state(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    return tmp_path


def write_report(path, modules=(("json", None),)) -> str:
    with open(path, "w") as handle:
        json.dump({"v": 1, "modules": [list(m) for m in modules], "path": [], "cwd": "/"}, handle)
    return str(path)


def test_a_kept_report_is_found_for_the_same_program_only(state):
    warm_seed.keep(write_report(state / "r.json"), ARGV, "/srv/a", ENV, template_ms=1500)
    path, wait, poor = warm_seed.find(ARGV, "/srv/a", ENV)
    with open(path) as handle:
        assert json.load(handle)["modules"] == [["json", None]]
    assert wait == pytest.approx(2 * 1.5) and poor is None
    assert warm_seed.find(ARGV, "/srv/b", ENV) is None  # another working directory
    assert warm_seed.find([*ARGV, "--port=1"], "/srv/a", ENV) is None  # another command line
    other_site = {**ENV, "DJANGO_SETTINGS_MODULE": "site.other"}
    assert warm_seed.find(ARGV, "/srv/a", other_site) is None  # other settings, other imports
    assert warm_seed.find(ARGV, "/srv/a", {**ENV, "TERM": "dumb"}) is not None


def test_a_fast_template_still_gets_the_minimum_wait(state):
    warm_seed.keep(write_report(state / "r.json"), ARGV, "/srv", ENV, template_ms=10)
    assert warm_seed.find(ARGV, "/srv", ENV)[1] == warm_seed.MIN_WAIT


@pytest.mark.parametrize(
    "content", ["{not json", '{"v": 99, "modules": [["json", null]]}', '{"v": 1, "modules": []}']
)
def test_an_unreadable_seed_is_no_seed(state, content):
    with open(warm_seed.seed_path(ARGV, "/srv", ENV), "w") as handle:
        handle.write(content)
    assert warm_seed.find(ARGV, "/srv", ENV) is None


def test_what_a_seed_says_its_template_left_out_is_read_back_for_the_next_template(state):
    left = [["cms.blocks", "cms.blocks", "reads the project's settings"]]
    warm_seed.keep(write_report(state / "r.json"), ARGV, "/srv", ENV, 10, left, tried=40)
    seed = warm_seed.seed_path(ARGV, "/srv", ENV)
    written = os.stat(seed).st_mtime_ns
    expected = {"cms.blocks": ("cms.blocks", "reads the project's settings", written)}
    assert preload.left_in_file(seed) == expected


def library(tmp_path, name: str) -> str:
    path = tmp_path / f"{name}.py"
    path.write_text("")
    return str(path)


def test_a_left_out_import_is_tried_again_once_its_file_or_its_culprits_changed(tmp_path):
    settings, failed = "reads the project's settings", "fails to import (ImportError)"
    origins = {name: library(tmp_path, name) for name in ("cms", "cms.blocks", "shop")}
    changes = [max(os.stat(o).st_mtime_ns, os.stat(o).st_ctime_ns) for o in origins.values()]
    seen = max(changes)  # the seed was written once every file had changed
    left = {
        "cms": ("cms", settings, seen),
        "cms.pages": ("cms.blocks", settings, seen),
        "builtin_one": ("builtin_one", settings, seen),  # no file: nothing to look at
        "shop": ("shop", failed, seen),  # a failure: what was missing may be there now
    }
    assert preload.still_left(left, origins) == {
        "cms": ("cms", settings),
        "cms.pages": ("cms.blocks", settings),
        "builtin_one": ("builtin_one", settings),
    }
    earlier = min(changes) - 1  # a seed written before any of them changed
    before = {"cms": ("cms", settings, earlier), "cms.pages": ("cms.blocks", settings, earlier)}
    assert preload.still_left(before, origins) == {}, "changed since the seed: tried again"
    os.unlink(origins["cms"])
    assert preload.still_left({"cms": ("cms", settings, seen)}, origins) == {}, "gone: tried"


@pytest.mark.parametrize("content", [None, "{not json", '["a list"]', '{"left": [["too short"]]}'])
def test_a_missing_or_unreadable_seed_leaves_nothing_out(state, content):
    seed = warm_seed.seed_path(ARGV, "/srv", ENV)
    if content is not None:
        with open(seed, "w") as handle:
            handle.write(content)
    assert preload.left_in_file(seed) == {}
    assert preload.left_in_file(None) == {}


def test_a_missing_report_keeps_nothing_and_raises_nothing(state):
    warm_seed.keep(str(state / "gone.json"), ARGV, "/srv", ENV, template_ms=10)
    assert warm_seed.find(ARGV, "/srv", ENV) is None


def test_only_the_newest_seeds_are_kept(state):
    report = write_report(state / "r.json")
    for n in range(5):
        warm_seed.keep(report, ARGV, f"/srv/{n}", ENV, template_ms=10)
        os.utime(warm_seed.seed_path(ARGV, f"/srv/{n}", ENV), ns=(n * 10**9, n * 10**9))
    warm_seed.prune(os.path.dirname(warm_seed.seed_path(ARGV, "/", ENV)), keep_newest=2)
    assert [warm_seed.find(ARGV, f"/srv/{n}", ENV) is not None for n in range(5)] == [
        False,
        False,
        False,
        True,
        True,
    ]


def test_the_interpreter_is_one_however_its_path_is_spelled(state, monkeypatch):
    """``manage.py`` run as ``../.venv/bin/python manage.py``: the lean supervisor it becomes
    sees ``sys.executable`` without the ``..`` (a seed planted before the exec was not found)."""
    monkeypatch.setattr(warm_seed.sys, "executable", "/srv/site/../.venv/bin/python")
    spelled = warm_seed.seed_path(ARGV, "/srv/site", ENV)
    monkeypatch.setattr(warm_seed.sys, "executable", "/srv/.venv/bin/python")
    assert warm_seed.seed_path(ARGV, "/srv/site", ENV) == spelled
    monkeypatch.setattr(warm_seed.sys, "executable", "/srv/other-env/bin/python")
    assert warm_seed.seed_path(ARGV, "/srv/site", ENV) != spelled


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="warm start is Linux's only")
def test_a_first_start_plants_what_this_process_imported_and_never_replaces_a_seed(state):
    warm_seed.plant(ARGV, "/srv/new", ENV)
    path, wait, _ = warm_seed.find(ARGV, "/srv/new", ENV)
    with open(path) as handle:
        planted = json.load(handle)
    names = {name for name, _ in planted["modules"]}
    assert {"json", "grace_plugins.warm_seed", "pytest"} <= names
    assert planted["left"] == [] and planted["template_ms"] > 0  # this process's age
    assert wait >= warm_seed.MIN_WAIT
    warm_seed.keep(write_report(state / "r.json"), ARGV, "/srv/kept", ENV, template_ms=10)
    warm_seed.plant(ARGV, "/srv/kept", ENV)  # a seed of a real template: kept as it is
    with open(warm_seed.find(ARGV, "/srv/kept", ENV)[0]) as handle:
        assert [name for name, _ in json.load(handle)["modules"]] == ["json"]


# -- the first generation of a seeded program -------------------------------------------------
@pytest.fixture
def seeded(state, monkeypatch, caplog):
    """A spawner whose program has a seed (a previous spawner's template was usable)."""
    monkeypatch.setattr(warm.sys, "executable", "python-unused")
    # the fake templates' pids are not theirs: their CPU time is unknown (no wait goes on)
    monkeypatch.setattr(first_wait, "cpu_seconds", lambda pid: None)
    templates = Templates()
    monkeypatch.setattr(warm_templates, "start_template", templates)
    caplog.set_level(logging.INFO, "test-warm")
    made = []

    def spawner(max_wait: float = 10.0):
        cold, sources = ColdSpawner(), {}
        log = logging.getLogger("test-warm")
        one = warm.WarmSpawner(log, argv_len=1, cold=cold, max_wait=max_wait)
        one.attach(sources.__setitem__, lambda fileobj: sources.pop(fileobj, None))
        made.append(one)
        return one, cold, sources

    previous, _, sources = spawner()
    warm_up(previous, templates, sources, state)
    previous.close()
    first = request(1, state)
    assert warm_seed.find(first.argv, str(state), first.env) is not None, "the template's report"
    yield (*spawner(), templates, spawner)
    for one in made:
        one.close()
    templates.close()


def answer_ready(peer) -> None:
    peer.send({"ready": 1, "known": ["json"], "skipped": [], "ms": 5, "files": {}, "stamps": {}})


def test_the_first_generation_is_forked_from_the_seeds_template(seeded, state, caplog):
    spawner, cold, sources, templates, _ = seeded
    built = len(templates.peers)
    assert spawner.spawn(request(1, state)) is None  # held: no cold start
    assert len(templates.peers) == built + 1, "a template built from the seed at once"
    assert spawner.deadline() == pytest.approx(time.monotonic() + warm_seed.MIN_WAIT, abs=1)
    answer_ready(templates.peers[-1])
    assert read(sources, spawner) == []  # the fork request is sent; its answer comes later
    message, _ = templates.peers[-1].receive(5)
    assert message["argv"] == request(1, state).argv
    templates.peers[-1].send({"pid": 4343})
    (outcome,) = read(sources, spawner)
    assert (outcome.number, outcome.process.pid, outcome.warm) == (1, 4343, True)
    assert cold.started == []
    spawner.refresh()  # the generation's report names nothing new: no second template
    assert len(templates.peers) == built + 1


def test_an_unusable_seed_template_starts_the_first_generation_cold(seeded, state, caplog):
    spawner, cold, sources, templates, _ = seeded
    assert spawner.spawn(request(1, state)) is None
    templates.peers[-1].send({"unsafe": "json started a thread at import, every time"})
    (outcome,) = read(sources, spawner)
    assert (outcome.number, outcome.warm, cold.started) == (1, False, [1])
    assert "generation 1 starts cold" in caplog.text
    assert "started a thread" in caplog.text


def test_a_template_that_exits_before_ready_starts_the_first_generation_cold(seeded, state):
    spawner, cold, sources, templates, _ = seeded
    assert spawner.spawn(request(1, state)) is None
    templates.peers[-1].sock.close()
    (outcome,) = read(sources, spawner)
    assert (outcome.number, cold.started) == (1, [1])
    assert spawner.deadline() is None or spawner.deadline() > time.monotonic() + 1


def test_a_slow_seed_template_is_not_waited_for_past_the_deadline(seeded, state, caplog):
    spawner, cold, sources, templates, _ = seeded
    assert spawner.spawn(request(1, state)) is None
    deadline = spawner.deadline()
    assert spawner.expire(deadline - 0.5) == []
    (outcome,) = spawner.expire(deadline)
    assert (outcome.number, cold.started) == (1, [1])
    assert "not ready yet" in caplog.text
    answer_ready(templates.peers[-1])  # it becomes the template for the upgrades
    assert read(sources, spawner) == []
    assert spawner.templates.ready is not None
    assert spawner.spawn(request(2, state)) is None  # forked
    assert cold.started == [1]


def test_the_wait_goes_on_while_the_template_uses_the_cpu_up_to_the_cap(
    seeded, state, monkeypatch, caplog
):
    """A loaded machine: the template takes longer than the first budget, but it is
    importing (its CPU time grows), so the first generation keeps waiting, to the cap."""
    *_, templates, make = seeded
    used = iter(range(100))
    monkeypatch.setattr(first_wait, "cpu_seconds", lambda pid: float(next(used)))
    spawner, cold, sources = make(max_wait=4.0)
    assert spawner.spawn(request(1, state)) is None
    first = spawner.deadline()
    assert spawner.expire(first) == [] and cold.started == []
    assert spawner.deadline() == pytest.approx(first + first_wait.STEP)
    assert spawner.expire(spawner.deadline()) == []
    answer_ready(templates.peers[-1])  # ready at last: the held generation is forked
    assert read(sources, spawner) == []
    assert templates.peers[-1].receive(5)[0]["argv"] == request(1, state).argv
    assert cold.started == [] and "not ready yet" not in caplog.text


def test_the_wait_ends_at_the_cap_however_busy_the_template(seeded, state, monkeypatch):
    *_, make = seeded
    used = iter(range(100))
    monkeypatch.setattr(first_wait, "cpu_seconds", lambda pid: float(next(used)))
    spawner, cold, _ = make(max_wait=2.5)
    assert spawner.spawn(request(1, state)) is None
    cap = time.monotonic() + 2.5
    looks = 0
    while not cold.started:
        assert looks < 10 and spawner.deadline() <= cap + 0.5
        spawner.expire(spawner.deadline())
        looks += 1
    assert cold.started == [1]


def test_a_template_using_no_cpu_is_not_waited_for_past_the_first_budget(
    seeded, state, monkeypatch
):
    """Blocked on a lock or the network: the first budget is all it gets."""
    *_, make = seeded
    monkeypatch.setattr(first_wait, "cpu_seconds", lambda pid: 1.0)
    spawner, cold, _ = make()
    assert spawner.spawn(request(1, state)) is None
    (outcome,) = spawner.expire(spawner.deadline())
    assert (outcome.number, cold.started) == (1, [1])


def test_a_template_that_says_it_is_a_poor_bet_starts_the_first_generation_cold_at_once(
    seeded, state, caplog
):
    """A CMS whose libraries read its settings: the template leaves out most of what it
    tries, so it is stopped, the first generation starts cold alone, and a template is built
    again from what that generation reports, for the upgrades."""
    spawner, cold, sources, templates, _ = seeded
    assert spawner.spawn(request(1, state)) is None
    templates.peers[-1].send({"poor": "left out 30 of the 100 imports tried"})
    (outcome,) = read(sources, spawner)
    assert (outcome.number, outcome.warm, cold.started) == (1, False, [1])
    assert "poor bet for it (left out 30 of the 100 imports tried)" in caplog.text
    assert templates.peers[-1].receive(5) is None, "stopped: its imports would slow gen 1 down"
    assert spawner.deadline() <= time.monotonic(), "and killed at once, not given time to leave"
    spawner.expire(time.monotonic())
    built = len(templates.peers)
    with open(spawner.reports.path, "w") as handle:  # generation 1 serves and reports its modules
        report = [["json", None], ["decimal", None]]
        json.dump({"v": 1, "modules": report, "path": [], "cwd": str(state)}, handle)
    spawner.refresh()
    assert len(templates.peers) == built + 1, "built again from what generation 1 imported"
    answer_ready(templates.peers[-1])
    assert read(sources, spawner) == []
    assert spawner.spawn(request(2, state)) is None and cold.started == [1]


def test_a_seed_whose_template_left_out_most_imports_is_not_waited_for(state, monkeypatch, caplog):
    """Its template would be a poor bet again: the first generation starts cold at once, with
    no template beside it; the template is built from what that generation reports, told
    what the seed says the last one left out."""
    monkeypatch.setattr(warm.sys, "executable", "python-unused")
    report = write_report(state / "r.json", [(f"lib{n}", None) for n in range(100)])
    left = [[f"lib{n}", f"lib{n}", "reads the project's settings"] for n in range(60)]
    argv, env = request(1, state).argv, request(1, state).env
    warm_seed.keep(report, argv, str(state), env, 900, left, tried=300)  # a fifth: still good
    assert warm_seed.find(argv, str(state), env).poor is None, "the template's count decides"
    warm_seed.keep(report, argv, str(state), env, 900, left, tried=250)
    assert "left out 60 of the 250 imports it tried" in warm_seed.find(argv, str(state), env).poor
    templates = Templates()
    monkeypatch.setattr(warm_templates, "start_template", templates)
    caplog.set_level(logging.INFO, "test-warm")
    cold = ColdSpawner()
    spawner = warm.WarmSpawner(logging.getLogger("test-warm"), argv_len=1, cold=cold)
    try:
        assert spawner.spawn(request(1, state)) is not None
        assert (cold.started, templates.peers) == ([1], [])
        assert "left out 60 of the 250 imports it tried; generation 1 starts cold" in caplog.text
        assert "this generation starts cold" not in caplog.text, "said once"
        write_report(spawner.reports.path)  # generation 1 reports: the template is built
        spawner.refresh()
        assert len(templates.peers) == 1
        seed = warm_seed.seed_path(argv, str(state), env)
        assert templates.seeds == [seed], "told of the seed: the 60 are not tried again"
        assert len(preload.left_in_file(seed)) == 60
    finally:
        spawner.close()
        templates.close()


def test_a_poor_bet_said_with_nobody_held_changes_nothing(seeded, state):
    spawner, cold, sources, templates, _ = seeded
    assert spawner.spawn(request(1, state)) is None
    answer_ready(templates.peers[-1])
    assert read(sources, spawner) == []
    templates.peers[-1].receive(5)  # the fork request of generation 1
    spawner.refresh()
    assert cold.started == []


def test_no_seed_means_a_cold_first_generation_as_before(state, monkeypatch):
    templates = Templates()
    monkeypatch.setattr(warm_templates, "start_template", templates)
    cold = ColdSpawner()
    spawner = warm.WarmSpawner(logging.getLogger("test-warm"), argv_len=1, cold=cold)
    try:
        assert spawner.spawn(request(1, state)) is not None
        assert (cold.started, templates.peers) == ([1], [])
    finally:
        spawner.close()
        templates.close()


def test_a_generation_given_up_while_held_is_never_started(seeded, state):
    """A stop or a rollback while the template imports: nothing is forked or started for it
    later (its channel end is closed by then), and the template serves the next spawn."""
    spawner, cold, sources, templates, _ = seeded
    assert spawner.spawn(request(1, state)) is None
    spawner.cancel(1)
    assert spawner.deadline() is None
    answer_ready(templates.peers[-1])
    assert read(sources, spawner) == []
    assert cold.started == [] and spawner.templates.ready is not None
    assert spawner.spawn(request(2, state)) is None  # forked: the fork request is for 2
    message, _ = templates.peers[-1].receive(5)
    assert message["argv"] == request(2, state).argv and cold.started == []


def test_the_wait_is_capped_so_that_a_cold_start_still_fits_the_ready_timeout(seeded, state):
    *_, make = seeded
    spawner, cold, sources = make(max_wait=0.5)
    assert spawner.spawn(request(1, state)) is None
    assert spawner.deadline() == pytest.approx(time.monotonic() + 0.5, abs=0.3)


def test_a_refused_fork_of_the_held_generation_says_why_it_starts_cold(seeded, state, caplog):
    spawner, cold, sources, templates, _ = seeded
    assert spawner.spawn(request(1, state)) is None
    answer_ready(templates.peers[-1])
    assert read(sources, spawner) == []
    templates.peers[-1].receive(5)
    templates.peers[-1].send({"error": "the template has more than one thread"})
    (outcome,) = read(sources, spawner)
    assert (outcome.number, cold.started) == (1, [1])
    assert "more than one thread; this generation starts cold" in caplog.text
