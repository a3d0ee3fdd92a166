"""Warm start on what real libraries do at import: the corpus of fake libraries in
``tests/fakelibs`` (its README says what each does), imported by one project
(``tests/apps/corpus``) run by each adapter that warms (``flask hotrun``, ``manage.py runhot``).

For each adapter: the template's one start line says what was left to the generations and why;
five upgrades under load are forked warm and serve the new code, none fails; inside every
generation each library is either inherited from the template (preloaded) or imported fresh
(left out) as expected, and works: its thread runs, its socket is its own, its settings are
read, its signal handler is set, its pool and random generator are the generation's own, its
lazy import of the project sees the new code. The template prints nothing else (no traceback,
no "Exception ignored"), and the libraries' ``atexit`` hooks run in the generations only.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sys

import pytest

from tests.harness import (
    PYTHON,
    ROOT,
    Load,
    http_get,
    wait_served_by,
    wait_until,
    write_module,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="warm start: Linux")

FAKELIBS = os.path.join(ROOT, "tests", "fakelibs")
CORPUS = os.path.join(ROOT, "tests", "apps", "corpus")
FLASK = os.path.join(os.path.dirname(sys.executable), "flask")
TEMPLATE_LINE = r"\[template (\d+)\] preloaded (\d+) modules in \d+ ms(.*)$"
TEMPLATE_SAID = r"\[template \d+\] (preloaded|unusable)"
FORKED = r"warm start: pid (\d+) forked from the template"
UPGRADES = 5
#: module -> imported by the generation itself (left out of the template) or inherited.
FRESH = {
    "corpus_hooks": False,
    "corpus_lazy": False,
    "corpus_nativethread": True,
    "corpus_settings.sub.leaf": True,
    "corpus_settings.sub": True,
    "corpus_socket": True,
    "corpus_state": False,
    "corpus_thread": True,
    "corpus_thread_user": True,
}
ADAPTERS = {
    "flask": ([FLASK, "--app", "app.py", "hotrun", "-p", "0", "--no-reload"], "flask"),
    "django": ([PYTHON, "manage.py", "runhot", "127.0.0.1:0", "--noreload"], "django"),
}


def start_corpus(start_server, tmp_path, adapter: str, again: bool = False):
    """The corpus project under *adapter*, the fake libraries on PYTHONPATH outside it
    (*again*: the copy a previous server of the test ran)."""
    argv, needs = ADAPTERS[adapter]
    pytest.importorskip(needs)
    project = tmp_path / "corpus"
    if not again:
        shutil.copytree(CORPUS, project, ignore=shutil.ignore_patterns("__pycache__"))
    env = {
        "PYTHONPATH": os.pathsep.join([ROOT, FAKELIBS]),
        "PYTHONDONTWRITEBYTECODE": "1",
        "CORPUS_HOOKS_LOG": str(tmp_path / "hooks.log"),
    }
    server = start_server(argv, cwd=str(project), env=env)
    return server, project, server.wait_ready(60)


def corpus_report(port: int, pid: int) -> dict:
    """What ``/corpus`` says in generation *pid*."""

    def probe():
        answer = json.loads(http_get(port, "/corpus").body)
        return answer if answer["pid"] == pid else None

    return wait_until(probe, 10, f"/corpus from pid {pid}")  # type: ignore[return-value]


def hooks_log(tmp_path) -> list[str]:
    path = tmp_path / "hooks.log"
    return path.read_text().splitlines() if path.exists() else []


def assert_left_out(line: str, adapter: str, again: bool = False) -> None:
    """The start line names each left-out library with its reason, and no kept one (*again*:
    a template built from the last run's seed tries none of them again)."""
    if again:
        assert "started over" not in line, line
    else:
        assert "(started over 1x)" in line, line  # the thread from C: the preload started over
    assert re.search(r"starts a thread: [^;)]*corpus_nativethread", line), line
    assert re.search(r"starts a thread: [^;)]*corpus_thread", line), line
    assert re.search(r"opens a socket: [^;)]*corpus_socket", line), line
    if adapter == "flask":
        assert re.search(r"imports the project's corpusconf: corpus_settings\.sub\b", line), line
    else:  # with Django's settings, and Django's own models
        assert "reads the project's settings: " in line, line
    for kept in ("corpus_hooks", "corpus_state", "corpus_lazy"):
        assert kept not in line, line


@pytest.mark.timeout(240)
@pytest.mark.parametrize("adapter", sorted(ADAPTERS))
def test_corpus_upgrades_warm_under_load(start_server, tmp_path, adapter):
    server, project, port = start_corpus(start_server, tmp_path, adapter)
    said = server.wait_for(TEMPLATE_SAID, 90)
    found = re.search(TEMPLATE_LINE, said.string)
    assert found, said.string
    assert_left_out(found.group(3), adapter)
    draws = set()
    with Load(port, fresh=2, keepalive=1, slow=1, slow_seconds=0.2, max_seconds=180) as load:
        wait_until(lambda: load.report.requests > 10, 10, "load to start")
        for n in range(2, 2 + UPGRADES):
            write_module(project / "corpusver.py", f"VERSION = 'v{n}'\n")
            mark = server.mark()
            pid = server.upgrade(60)
            assert int(server.wait_for(FORKED, 5, after=mark).group(1)) == pid
            assert wait_served_by(port, pid).version == f"v{n}"
            state = corpus_report(port, pid)
            assert state["fresh"] == FRESH, state
            assert state["settings"] == "live" and state["leaf"] == "leaf", state
            assert state["thread"] and state["socket"] and state["usr1"], state
            assert state["pool"] and state["lazy"] == f"v{n}", state
            draws.add(state["draw"])
        report = load.stop()
    assert report.failures == [], report.summary()
    assert len(draws) == UPGRADES, f"generations drew the same numbers: {draws}"

    os.kill(pid, signal.SIGUSR1)  # the library's handler, inherited: not the default (death)
    wait_until(lambda: f"usr1 {pid}" in hooks_log(tmp_path), 10, "the SIGUSR1 handler")
    # it serves on; polled: the previous generation may still take a connection until it
    # has acted on its drain order (seconds after on a loaded machine)
    assert wait_served_by(port, pid).pid == pid
    output = server.output()
    assert "Exception ignored" not in output and "Traceback" not in output, output[-3000:]
    template_lines = [line for line in output.splitlines() if "[template " in line]
    assert all(re.search(TEMPLATE_LINE, line) for line in template_lines), template_lines
    assert server.stop() == 0
    exits = {line.split()[1] for line in hooks_log(tmp_path) if line.startswith("atexit ")}
    generations = {str(p) for p in server.generation_pids().values()}
    assert exits == generations, f"atexit ran in {exits}, generations {generations}"


@pytest.mark.timeout(240)
@pytest.mark.parametrize("adapter", sorted(ADAPTERS))
def test_corpus_started_again_forks_its_first_generation_trying_nothing_left_out_again(
    start_server, tmp_path, adapter
):
    first, project, _ = start_corpus(start_server, tmp_path, adapter)
    first.wait_for(r"warm start: template \(pid \d+\) ready after", 90)
    assert first.stop() == 0
    server, _, port = start_corpus(start_server, tmp_path, adapter, again=True)
    said = server.wait_for(TEMPLATE_SAID, 5)  # before the first generation was ready
    found = re.search(TEMPLATE_LINE, said.string)
    assert found, said.string
    assert_left_out(found.group(3), adapter, again=True)
    gen1 = server.generation_pids()[1]
    assert int(server.wait_for(FORKED, 5).group(1)) == gen1
    state = corpus_report(port, gen1)
    assert state["fresh"] == FRESH, state
    assert state["settings"] == "live" and state["thread"] and state["socket"], state
    assert state["pool"] and state["lazy"] == "v1", state
    write_module(project / "corpusver.py", "VERSION = 'v2'\n")
    assert wait_served_by(port, server.upgrade(60)).version == "v2"
    output = server.output()
    assert "Exception ignored" not in output and "Traceback" not in output, output[-3000:]
    assert server.stop() == 0
