"""Warm start end to end: generations forked from the template, for the core test server,
``flask hotrun`` and ``manage.py runhot``; the fallbacks to a cold start, each with its log line.

Real processes and sockets; every wait is on a line the server prints, bounded in time.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import re
import shutil
import signal
import sys

import pytest

from tests.e2e.test_core_e2e import start
from tests.harness import (
    PYTHON,
    ROOT,
    Load,
    fd_count,
    http_get,
    procfs,
    wait_served_by,
    wait_until,
    write_code,
    write_module,
    zombies,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="warm start: Linux")

TEMPLATE_READY = r"\[template (\d+)\] preloaded (\d+) modules"
FORKED = r"warm start: pid (\d+) forked from the template"
COLD = r"warm start: (.*); this generation starts cold"
FLASK = os.path.join(os.path.dirname(sys.executable), "flask")
DJSITE = os.path.join(ROOT, "bench", "apps", "djsite")
RANDOM_PROBE = "import random\nSEED = random.random()\n"


def warm_server(start_server, app_dir, env=None, **kwargs):
    """The core test server, once its template has preloaded (the template and the
    supervisor give the same count)."""
    server = start(start_server, app_dir, interval=0.1, env=env, **kwargs)
    said = server.wait_for(TEMPLATE_READY, 30)
    heard = server.wait_for(rf"template \(pid {said.group(1)}\) ready after \d+ ms with (\d+)", 10)
    assert heard.group(1) == said.group(2), server.output()
    return server


def upgrade_warm(server) -> int:
    """HUP; the new generation must be forked from the template; return its pid."""
    mark = server.mark()
    pid = server.upgrade()
    assert int(server.wait_for(FORKED, 5, after=mark).group(1)) == pid, server.output(mark)
    return pid


def next_template(server, mark: int) -> int:
    """Wait for a template built after *mark*; return its pid."""
    return int(server.wait_for(TEMPLATE_READY, 30, after=mark).group(1))


def proc_fds(pid: int) -> list[str]:
    """What *pid*'s open fds point to (an fd closed while we look is left out)."""
    links = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):
            links.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
    return sorted(links)


def library(tmp_path_factory, name: str, text: str) -> str:
    """A module on PYTHONPATH outside the project (as an installed or sibling package)."""
    lib = tmp_path_factory.mktemp("lib")
    write_module(lib / f"{name}.py", text)
    return str(lib)


def lib_env(lib: str) -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join([ROOT, lib]), "PYTHONDONTWRITEBYTECODE": "1"}


# -- the core test server ---------------------------------------------------------------------
@pytest.mark.timeout(120)
def test_warm_upgrades_under_load_fail_nothing_and_look_fresh(start_server, app_dir):
    write_code(app_dir, "v1", RANDOM_PROBE)
    server = warm_server(start_server, app_dir)
    supervisor_fds = fd_count(server.pid)
    seeds = set()
    with Load(server.port, fresh=2, keepalive=1, slow=1, slow_seconds=0.2, max_seconds=90) as load:
        wait_until(lambda: load.report.requests > 20, 10, "load to start")
        for n in range(2, 8):
            write_code(app_dir, f"v{n}", RANDOM_PROBE + "VERSION = f'{VERSION}-{SEED}'")
            pid = upgrade_warm(server)
            version = wait_served_by(server.port, pid).version
            assert version.startswith(f"v{n}-"), version
            seeds.add(version.split("-", 1)[1])
        report = load.stop()
    assert report.failures == [], report.summary()
    assert len(seeds) == 6, f"random was not reseeded: {seeds}"
    gen = http_get(server.port).pid
    probe = json.loads(http_get(server.port, "/spawn").body)
    assert max(probe["fds"]) <= 3 and probe["env"] == [], probe
    with open(f"/proc/{gen}/status") as handle:
        status = handle.read()
    assert re.search(r"SigBlk:\s*0+\n", status), "the generation's signal mask is not empty"
    assert os.getsid(gen) == gen and os.getpgid(gen) == gen
    with open(f"/proc/{gen}/stat") as handle:
        assert int(handle.read().rsplit(")", 1)[1].split()[1]) == server.pid  # reaped by us
    assert os.readlink(f"/proc/{gen}/cwd") == str(app_dir)
    wait_until(lambda: not zombies(server.pid), 10, "the supervisor to reap every generation")
    wait_until(lambda: fd_count(server.pid) <= supervisor_fds, 10, f"<= {supervisor_fds} fds")
    assert server.stop() == 0


@pytest.mark.timeout(60)
def test_generation_gets_no_fd_of_the_template_or_supervisor(start_server, app_dir, tmp_path):
    secret = tmp_path / "supervisor-only.log"
    server = warm_server(start_server, app_dir, env={"GRACE_TEST_OPEN_FILE": str(secret)})
    gen = upgrade_warm(server)
    wait_served_by(server.port, gen)
    template = int(re.findall(TEMPLATE_READY, server.output())[-1][0])
    links = proc_fds(gen)
    assert str(secret) not in links
    assert proc_fds(template), "the template holds its socket to the supervisor"
    shared = set(links) & set(proc_fds(template)) - {"/dev/null"}
    assert all(not link.startswith(("socket:", "/")) for link in shared), shared
    assert server.stop() == 0


@pytest.mark.timeout(90)
def test_preloaded_module_changed_on_disk_is_served_by_the_next_upgrade(
    start_server, app_dir, tmp_path_factory
):
    lib = library(tmp_path_factory, "warmlib", "VALUE = 'lib1'\n")
    write_code(app_dir, "v1", "import warmlib\nVERSION = warmlib.VALUE")
    server = warm_server(start_server, app_dir, env=lib_env(lib))
    assert http_get(server.port).version == "lib1"
    upgrade_warm(server)  # the template preloaded warmlib
    write_module(os.path.join(lib, "warmlib.py"), "VALUE = 'lib2'\n")
    server.wait_for(r"exited after draining", 10)  # the next HUP is not coalesced
    mark = server.mark()
    pid = server.upgrade()
    line = server.wait_for(COLD, 5, after=mark).group(1)
    assert line.startswith("warmlib changed on disk"), line
    assert wait_served_by(server.port, pid).version == "lib2"
    next_template(server, mark)
    pid = upgrade_warm(server)  # the rebuilt template has the new file
    assert wait_served_by(server.port, pid).version == "lib2"
    assert server.stop() == 0


@pytest.mark.timeout(90)
def test_files_libraries_read_at_import_are_read_anew_by_the_upgrades(
    start_server, app_dir, tmp_path_factory
):
    """A library reading its config beside the app is left to the generations; one reading a
    file outside the project is preloaded, and the template is stale once that file changed."""
    lib = library(
        tmp_path_factory,
        "cfglib",
        "import os\nwith open(os.path.join(os.getcwd(), 'lib.cfg')) as f:\n"
        "    CONF = f.read().strip()\n",
    )
    outside = os.path.join(lib, "featlib.conf")
    write_module(outside, "mode1\n")
    write_module(os.path.join(lib, "featlib.py"), f"MODE = open({outside!r}).read().strip()\n")
    write_module(app_dir / "lib.cfg", "conf1\n")
    write_code(app_dir, "v1", "import cfglib, featlib\nVERSION = cfglib.CONF + '-' + featlib.MODE")
    server = warm_server(start_server, app_dir, env=lib_env(lib))
    assert "reads a project file: cfglib" in server.output()
    assert wait_served_by(server.port, upgrade_warm(server)).version == "conf1-mode1"
    write_module(app_dir / "lib.cfg", "conf-two\n")
    assert wait_served_by(server.port, upgrade_warm(server)).version == "conf-two-mode1"
    write_module(outside, "mode-two\n")
    server.wait_for(r"exited after draining", 10)  # the next HUP is not coalesced
    mark = server.mark()
    pid = server.upgrade()
    line = server.wait_for(COLD, 5, after=mark).group(1)
    assert line.startswith(f"a file featlib read at import changed on disk ({outside})"), line
    assert wait_served_by(server.port, pid).version == "conf-two-mode-two"
    next_template(server, mark)
    assert wait_served_by(server.port, upgrade_warm(server)).version == "conf-two-mode-two"
    assert server.stop() == 0


@pytest.mark.timeout(60)
def test_preloaded_module_that_starts_a_thread_is_left_to_the_generations(
    start_server, app_dir, tmp_path_factory
):
    lib = library(
        tmp_path_factory,
        "threadlib",
        "import threading, time\n"
        "threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()\n",
    )
    write_code(app_dir, "v1", "import threadlib")
    server = start(start_server, app_dir, interval=0.1, env=lib_env(lib))
    server.wait_for(r"\[template \d+\] preloaded .*starts a thread: threadlib", 30)
    write_code(app_dir, "v2", "import threadlib")
    assert wait_served_by(server.port, upgrade_warm(server)).version == "v2"
    assert server.stop() == 0


@pytest.mark.timeout(60)
def test_killed_template_next_upgrade_starts_cold_then_warm_again(start_server, app_dir):
    server = warm_server(start_server, app_dir)
    template = int(re.findall(TEMPLATE_READY, server.output())[-1][0])
    os.kill(template, signal.SIGKILL)
    write_code(app_dir, "v2")
    mark = server.mark()
    pid = server.upgrade()
    assert server.wait_for(COLD, 5, after=mark)
    assert wait_served_by(server.port, pid).version == "v2"
    next_template(server, mark)
    write_code(app_dir, "v3")
    assert wait_served_by(server.port, upgrade_warm(server)).version == "v3"
    wait_until(lambda: not zombies(server.pid), 10, "the killed template to be reaped")
    assert server.stop() == 0


@pytest.mark.timeout(60)
def test_a_fork_the_template_makes_too_late_does_not_serve_on(start_server, app_dir):
    """A template not scheduled for longer than the fork timeout (a stalled machine): the
    generation starts cold; if the template then forks the request after all, that process
    must leave, not serve beside the cold one unknown to the supervisor."""
    server = warm_server(start_server, app_dir)
    template = int(re.findall(TEMPLATE_READY, server.output())[-1][0])
    os.kill(template, signal.SIGSTOP)
    write_code(app_dir, "v2")
    mark = server.mark()
    try:
        os.kill(server.pid, signal.SIGHUP)
        server.wait_for(r"the template did not fork within 5 s", 15, after=mark)
    finally:
        os.kill(template, signal.SIGCONT)  # it reads the request now: a late fork
    cold = int(server.wait_for(r"generation 2 \(pid (\d+)\) ready after", 20, after=mark)[1])
    first = int(re.findall(r"generation 1 \(pid (\d+)\)", server.output())[0])

    def strangers() -> set[int]:
        templates = {int(pid) for pid, _ in re.findall(TEMPLATE_READY, server.output())}
        return set(procfs.child_pids(server.pid) or ()) - {cold, first} - templates

    server.wait_for(rf"generation 1 \(pid {first}\) exited after draining", 15, after=mark)
    wait_until(lambda: not strangers(), 15, "no process the supervisor does not know of")
    for _ in range(20):
        answer = http_get(server.port)
        assert (answer.pid, answer.version) == (cold, "v2")
    write_code(app_dir, "v3")
    assert wait_served_by(server.port, server.upgrade()).version == "v3"
    server.wait_for(rf"generation 2 \(pid {cold}\) exited after draining", 15)
    assert server.stop() == 0
    output = server.output()
    assert "Traceback" not in output  # the late fork and its template left quietly
    assert output.count("did not fork within 5 s") == 1, output


@pytest.mark.timeout(60)
def test_broken_code_forked_warm_is_rolled_back(start_server, app_dir):
    server = warm_server(start_server, app_dir)
    old = http_get(server.port).pid
    write_code(app_dir, "v2", "raise RuntimeError('broken on purpose')")
    mark = server.mark()
    os.kill(server.pid, signal.SIGHUP)
    server.wait_for(FORKED, 10, after=mark)
    # forked warm, it fails; started again cold (the template might be at fault), it fails
    # again: only then is it the code's fault, and rolled back
    warm = r"generation 2 \(pid \d+\), forked warm, exited \(exit status 1\)"
    server.wait_for(warm, 15, after=mark)
    cold = r"generation 2 .*exit status 1\) before it was ready \(so did its warm start\)"
    server.wait_for(rf"upgrade rolled back: {cold}", 30, after=mark)
    assert "RuntimeError: broken on purpose" in server.output(mark)
    assert http_get(server.port).pid == old
    write_code(app_dir, "v3")
    assert wait_served_by(server.port, upgrade_warm(server)).version == "v3"
    wait_until(lambda: not zombies(server.pid), 10, "the failed generation to be reaped")
    assert server.stop() == 0


@pytest.mark.timeout(60)
def test_stopping_the_supervisor_stops_the_template(start_server, app_dir):
    server = warm_server(start_server, app_dir)
    template = int(re.findall(TEMPLATE_READY, server.output())[-1][0])
    assert server.stop() == 0
    wait_until(lambda: not os.path.exists(f"/proc/{template}"), 10, "the template to exit")


# -- the adapters -----------------------------------------------------------------------------
@pytest.mark.timeout(90)
@pytest.mark.skipif(not os.path.exists(FLASK), reason="flask is not installed")
def test_flask_hotrun_upgrades_warm(start_server, tmp_path):
    app = tmp_path / "app.py"
    source = pathlib.Path(ROOT, "example_flask", "app.py").read_text()
    write_module(app, source)
    server = start_server([FLASK, "--app", "app.py", "hotrun", "-p", "0"], cwd=str(tmp_path))
    port = server.wait_ready(30)
    server.wait_for(TEMPLATE_READY, 30)
    with Load(port, fresh=2, keepalive=1, slow=1, slow_seconds=0.2, max_seconds=60) as load:
        wait_until(lambda: load.report.requests > 10, 10, "load to start")
        for n in (2, 3):
            write_module(app, source.replace('VERSION = "v1"', f'VERSION = "v{n}"'))
            assert wait_served_by(port, upgrade_warm(server)).version == f"v{n}"
        report = load.stop()
    assert report.failures == [], report.summary()
    wait_until(lambda: not zombies(server.pid), 10, "the supervisor to reap")
    assert server.stop() == 0


@pytest.mark.timeout(120)
def test_django_runhot_upgrades_warm(start_server, tmp_path):
    pytest.importorskip("django")
    site = tmp_path / "site"
    shutil.copytree(DJSITE, site, ignore=shutil.ignore_patterns("__pycache__", "*.sqlite3"))
    env = {"PYTHONDONTWRITEBYTECODE": "1"}
    server = start_server(
        [PYTHON, "manage.py", "runhot", "127.0.0.1:0", "--noreload"], cwd=str(site), env=env
    )
    port = server.wait_ready(60)
    preloaded = server.wait_for(r"\[template \d+\] preloaded .*", 60)
    assert "fails to import" not in preloaded[0], preloaded[0]  # the sqlite backend's cycle
    version = site / "shop" / "version.py"
    with Load(port, fresh=2, keepalive=1, slow=1, slow_seconds=0.2, max_seconds=60) as load:
        wait_until(lambda: load.report.requests > 10, 10, "load to start")
        for n in (2, 3):
            write_module(version, f"VERSION = 'v{n}'\n")
            assert wait_served_by(port, upgrade_warm(server)).version == f"v{n}"
        report = load.stop()
    assert report.failures == [], report.summary()
    write_module(version, "raise RuntimeError('broken on purpose')\n")
    mark = server.mark()
    os.kill(server.pid, signal.SIGHUP)
    server.wait_for(r"upgrade rolled back", 30, after=mark)
    wait_until(lambda: not zombies(server.pid), 10, "the supervisor to reap")
    assert server.stop() == 0


@pytest.mark.timeout(90)
def test_an_interpreter_started_by_a_relative_path_still_forks_warm(start_server, app_dir):
    """``../.venv/bin/python app.py``: the program's ``sys.executable`` keeps the ``..``, the
    re-executed supervisor's is normalised; the same interpreter all the same (every upgrade
    started cold: "the command line cannot be re-run in-process")."""
    write_code(app_dir, "v1")
    spelt = os.path.relpath(PYTHON, app_dir)  # run from app_dir: ../../.venv/bin/python
    assert spelt.startswith("..")
    argv = [spelt, os.path.join(ROOT, "tests", "apps", "core_server.py"), "127.0.0.1:0"]
    server = start_server([*argv, "--interval=0.1"], cwd=app_dir)
    server.wait_ready()
    server.wait_for(TEMPLATE_READY, 30)
    write_code(app_dir, "v2")
    pid = upgrade_warm(server)
    assert wait_served_by(server.port, pid).version == "v2"
    assert "starts cold" not in server.output(), server.output()
    assert server.stop() == 0
