"""A program started again where it ran before forks its first generation from a template of
the modules its last run imported (so that generation shares the template's pages from the
start), and falls back to the cold start, as before, whenever that cannot serve."""

from __future__ import annotations

import os
import sys

import pytest

from tests.harness import PYTHON, ROOT, http_get, wait_served_by, write_code
from tests.harness.code import CMS_LIBRARIES, write_cms_libraries
from tests.harness.core import SERVER, start

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="warm start: Linux")

FORKED = r"warm start: pid (\d+) forked from the template"
TEMPLATE_READY = r"warm start: template \(pid (\d+)\) ready after"
FAKELIBS = os.path.join(ROOT, "tests", "fakelibs")


def run_once(start_server, app_dir) -> None:
    """A first run, stopped once its template was ready (its modules are then the seed)."""
    first = start(start_server, app_dir)
    first.wait_warm()
    assert first.count(FORKED) == 0, "a first run's first generation starts cold"
    assert first.stop() == 0


@pytest.mark.timeout(90)
def test_a_second_run_forks_its_first_generation_from_the_last_runs_modules(start_server, app_dir):
    run_once(start_server, app_dir)
    second = start(start_server, app_dir)
    forked = second.wait_for(FORKED, 1)  # already said: before the first generation was ready
    assert int(forked.group(1)) == second.generation_pids()[1]
    answer = http_get(second.port)
    assert (answer.status, answer.pid, answer.version) == (200, second.generation_pids()[1], "v1")
    write_code(app_dir, "v2")
    assert wait_served_by(second.port, second.upgrade()).version == "v2"
    assert second.count(r"warm start: template \(pid \d+\) ready") == 1, "no rebuild at start"
    assert second.stop() == 0


@pytest.mark.timeout(90)
def test_code_broken_since_the_last_run_fails_the_first_start_as_a_cold_start_does(
    start_server, app_dir
):
    run_once(start_server, app_dir)
    write_code(app_dir, "v1", "raise RuntimeError('broken since the last run')")
    argv = [PYTHON, SERVER, "127.0.0.1:0", "--ready=10", "--drain=10", "--interval=0.1"]
    second = start_server(argv, cwd=app_dir)
    second.wait_for(FORKED, 20)
    second.wait_for(
        r"the app failed to start: generation 1 .* exited \(exit status 1\) .*\(so did its warm", 20
    )
    assert "RuntimeError: broken since the last run" in second.output()
    assert second.proc.wait(10) == 1  # as the cold start of the same code exits


@pytest.mark.timeout(90)
@pytest.mark.parametrize("slow, forked", [("cpu", True), ("sleep", False)])
def test_a_template_slower_than_last_time_is_waited_for_while_it_computes(
    start_server, app_dir, slow, forked
):
    """A loaded machine (a CI runner) makes the template take longer than twice its last
    time: while it computes, the first generation keeps waiting and is forked from it; a
    template that only sleeps (blocked on a lock, the network) is given up on at the first
    budget (twice the last template's time, at least 2 s), and that generation starts cold."""
    write_code(app_dir, "v1", "import corpus_slow")
    env = {"PYTHONPATH": os.pathsep.join([ROOT, FAKELIBS])}
    first = start(start_server, app_dir, ready=45, env=env)  # the same command line
    first.wait_warm()
    assert first.stop() == 0
    # 6 s: past the first budget even on a loaded machine, within the cap (15 s)
    second = start(start_server, app_dir, ready=45, env={**env, "CORPUS_SLOW": f"{slow}:6"})
    first_generation = second.generation_pids()[1]
    budget = second.wait_for(r"waits \((\d+\.\d) s, up to 15\.0 s while it is importing\)", 1)
    assert float(budget.group(1)) < 6, "the last template was slower than this one: no test"
    if forked:
        assert int(second.wait_for(FORKED, 1).group(1)) == first_generation
    else:
        second.wait_for(r"not ready yet; generation 1 starts cold", 1)
        assert second.count(FORKED) == 0
    assert http_get(second.port).pid == first_generation
    assert second.stop() == 0


@pytest.mark.timeout(120)
def test_a_template_that_leaves_out_most_of_its_imports_does_not_hold_the_first_generation(
    start_server, app_dir, tmp_path_factory
):
    """A site whose libraries mostly read its settings (a CMS): its template leaves out most
    of what it tries, and a first generation forked from it would import all that again
    after the wait. Its seed says so: the first generation starts cold at once, alone (a
    template importing beside it would slow it down), and the upgrades are forked from the
    template built from what it reported, which does not try again what the seed says its last
    template left out, until those libraries change."""
    libs = tmp_path_factory.mktemp("cms")
    tried = libs / "tried.log"  # the pid of each process that imports one of them
    logs_and_imports_the_project = (  # as a library reading the settings at import does
        f"import os\nwith open({str(tried)!r}, 'a') as log:\n"
        "    log.write(f'{os.getpid()}\\n')\nimport appcode\n"
    )
    body = write_cms_libraries(libs, logs_and_imports_the_project)
    write_code(app_dir, "v1", body)
    env = {"PYTHONPATH": str(libs)}
    first = start(start_server, app_dir, env=env)
    first.wait_warm()  # its template left them out: the seed says so
    first_template = first.wait_for(TEMPLATE_READY).group(1)
    assert first_template in tried.read_text().split(), "the first template tried them"
    assert first.stop() == 0
    second = start(start_server, app_dir, env=env)
    poor = r"its last template left out (\d+) of the \d+ imports it tried; generation 1 starts"
    assert int(second.wait_for(poor, 1).group(1)) == CMS_LIBRARIES
    assert second.count(FORKED) == 0
    assert second.count(r"template \(pid \d+\) ready") == 0, "none built beside generation 1"
    second.wait_warm()  # built from what generation 1 reported
    second_template = second.wait_for(TEMPLATE_READY).group(1)
    assert second_template not in tried.read_text().split(), "nor tried again by this one"
    write_code(app_dir, "v2", body)
    assert wait_served_by(second.port, second.upgrade()).version == "v2"
    assert second.count(FORKED) == 1, "the upgrade is forked from the template"
    assert second.stop() == 0
    # the libraries are upgraded and no longer read the settings: the next template tries them
    write_cms_libraries(libs, logs_and_imports_the_project.replace("import appcode\n", ""))
    third = start(start_server, app_dir, env=env)
    third.wait_for(poor, 1)  # the seed still says so: generation 1 starts cold
    third.wait_warm()
    third_template = third.wait_for(TEMPLATE_READY).group(1)
    assert tried.read_text().split().count(third_template) == CMS_LIBRARIES, "tried, preloaded"
    assert third.stop() == 0
