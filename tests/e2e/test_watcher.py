"""The supervisor's file watcher end to end (issue 22): every save counts, once, under load.

A Flask app served by ``flask hotrun --reload`` (or ``run_simple`` with the stat loop), its
version in ``version.py``; the ways editors save (a plain write, a rename over the file, a
backup then a write), a ``git checkout`` of many files at once, a file nothing loaded, an
``--extra-files`` entry, the polling fallback, a save while a broken save rolls back and one
while an old generation drains. Each wait is on a line the server prints or an answer it
gives, bounded in time.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import threading

import pytest

from tests.harness import PYTHON, Load, http_get, joined, wait_served_by, wait_until, write_module

FLASK = os.path.join(os.path.dirname(sys.executable), "flask")
ENV = {"PYTHONDONTWRITEBYTECODE": "1"}
UPGRADE = r"upgrade started \(file changed: (\S+?)(?: \(and (\d+) more\))?\): generation (\d+)"
WATCHED = r"watching \d+ files and \d+ globs: what generation {n} loaded"

APP = """\
import os
import time

from flask import Flask, request

import version
import settings_reader

app = Flask(__name__)


@app.get("/hello")
def hello():
    seconds = float(request.args.get("sleep", "0"))
    if seconds:
        print(f"app: a {seconds:g} s request started (pid {os.getpid()})", flush=True)
    time.sleep(seconds)
    return f"WORLD! ospid:{os.getpid()} version:{version.VERSION}"
"""
SETTINGS_READER = """\
import os

with open(os.path.join(os.path.dirname(__file__), "settings.cfg")) as handle:
    SETTING = handle.read().strip()
"""
RUN_SIMPLE = """\
from grace_plugins import run_simple

from app import app

if __name__ == "__main__":
    run_simple("127.0.0.1", 0, app, threaded=True, use_reloader=True, reloader_type="stat",
               reloader_interval=0.2, upgrade_interval=0)
"""


def project(directory) -> None:
    write_module(directory / "app.py", APP)
    write_module(directory / "version.py", 'VERSION = "v1"\n')
    write_module(directory / "settings_reader.py", SETTINGS_READER)
    (directory / "settings.cfg").write_text("one\n")
    write_module(directory / "serve.py", RUN_SIMPLE)


def hotrun(start_server, directory, *extra: str):
    if not os.path.exists(FLASK):
        pytest.skip("flask is not installed")
    # no pacing (these tests are about the watcher): a save that comes after the last one is
    # served is an upgrade of its own, named after its file
    argv = [FLASK, "--app", "app.py", "hotrun", "-p", "0", "--with-threads", "--reload"]
    argv += ["--upgrade-interval", "0", *extra]
    server = start_server(argv, cwd=str(directory), env=ENV)
    port = server.wait_ready(60)
    server.wait_for(WATCHED.format(n=1), 30)
    return server, port


def upgraded(server, mark: int, timeout: float = 30.0) -> tuple[str, int]:
    """Wait for the upgrade a save started after *mark* (a save within ``--upgrade-interval``
    of the last upgrade is queued, and its upgrade says so instead); return (the file named,
    generation) once that generation is ready."""
    found = server.wait_for(UPGRADE, timeout, after=mark)
    number = int(found.group(3))
    server.wait_for(rf"generation {number} \(pid \d+\) ready after", timeout, after=mark)
    return os.path.basename(found.group(1)), number


def set_version(directory, version: str, how: str = "write") -> None:
    """Save ``version.py`` as an editor would: *how* is ``write`` (in place), ``rename`` (a
    temporary file renamed over it: ``os.replace``, JetBrains' safe write) or ``backup`` (vim:
    the old file renamed to ``version.py~``, a new one written, the backup removed)."""
    path = directory / "version.py"
    text = f"VERSION = {version!r}\n"
    if how == "write":
        with open(path, "w") as handle:
            handle.write(text)
    elif how == "rename":
        tmp = directory / "version.py.tmp"
        tmp.write_text(text)
        os.replace(tmp, path)
    else:
        backup = directory / "version.py~"
        os.replace(path, backup)
        path.write_text(text)
        os.unlink(backup)


# -- tests -----------------------------------------------------------------------------------------
@pytest.mark.timeout(180)
def test_each_way_an_editor_saves_is_one_upgrade_under_load(start_server, tmp_path):
    project(tmp_path)
    # four saves can come within one slow request: room for every drain (past max_draining the
    # oldest is cut short, by design; that is not what this test is about)
    server, port = hotrun(start_server, tmp_path, "--max-draining", "8")
    with Load(
        port, fresh=2, keepalive=1, idle=1, slow=1, slow_seconds=0.5, max_seconds=150
    ) as load:
        wait_until(lambda: load.report.requests > 20, 20, "the load to start")
        for n, how in enumerate(["write", "rename", "backup", "write"], start=2):
            mark = server.mark()
            set_version(tmp_path, f"v{n}", how)
            name, number = upgraded(server, mark)
            assert name == "version.py", how
            pid = server.generation_pids()[number]
            assert wait_served_by(port, pid).version == f"v{n}"
            server.wait_for(WATCHED.format(n=number), 30, after=mark)
            # one save, one upgrade: no second upgrade for the same save
            assert server.count(UPGRADE, after=mark) == 1, server.output(mark)
        report = load.stop()
    assert report.failures == [], report.summary()
    assert server.stop() == 0


@pytest.mark.timeout(120)
def test_a_checkout_of_fifty_files_is_one_or_two_upgrades(start_server, tmp_path):
    project(tmp_path)
    for n in range(50):
        write_module(tmp_path / f"mod{n}.py", f"N = {n}\n")
    write_module(tmp_path / "app.py", APP + "".join(f"import mod{n}\n" for n in range(50)))
    server, port = hotrun(start_server, tmp_path)
    mark = server.mark()
    for n in range(50):  # as git writes a checkout: one file after the other
        (tmp_path / f"mod{n}.py").write_text(f"N = {n + 100}\n")
    set_version(tmp_path, "v2")
    name, number = upgraded(server, mark)
    assert wait_served_by(port, server.generation_pids()[number]).version in ("v1", "v2")
    wait_until(lambda: http_get(port).version == "v2", 20, "v2 to be served")
    upgrades = server.count(UPGRADE, after=mark)
    assert 1 <= upgrades <= 2, server.output(mark)
    assert server.stop() == 0


@pytest.mark.timeout(120)
def test_a_file_nothing_loaded_changes_nothing_but_extra_files_do(start_server, tmp_path):
    project(tmp_path)
    server, port = hotrun(start_server, tmp_path, "--extra-files", "settings.cfg")
    mark = server.mark()
    (tmp_path / "notes.txt").write_text("a file nothing loaded\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "cache.bin").write_bytes(b"x")
    (tmp_path / "settings.cfg").write_text("two\n")  # an --extra-files entry
    name, number = upgraded(server, mark)
    assert name == "settings.cfg"
    assert server.count(UPGRADE, after=mark) == 1  # the other writes started nothing
    assert server.stop() == 0


@pytest.mark.timeout(120)
def test_the_polling_fallback_of_the_stat_reloader(start_server, tmp_path):
    project(tmp_path)
    server = start_server([PYTHON, "serve.py"], cwd=str(tmp_path), env=ENV)
    port = server.wait_ready(60)
    server.wait_for(r"watching for file changes by polling every 0\.2 s", 10)
    server.wait_for(WATCHED.format(n=1), 30)
    mark = server.mark()
    set_version(tmp_path, "v2", "rename")
    name, number = upgraded(server, mark)
    assert name == "version.py"
    assert wait_served_by(port, server.generation_pids()[number]).version == "v2"
    assert server.stop() == 0


@pytest.mark.timeout(180)
def test_the_fix_saved_while_broken_code_loads_is_served(start_server, tmp_path):
    """A broken save starts an upgrade; the fix is saved while the broken code is inside its
    import (it says so, then fails a second later). Whether the cold retry of that generation
    or the next upgrade picks the fix up, it is served, and nothing fails meanwhile."""
    project(tmp_path)
    server, port = hotrun(start_server, tmp_path)
    broken = (
        "import os, time\n"
        "print(f'app: broken import (pid {os.getpid()})', flush=True)\n"
        "time.sleep(1)\n"
        "raise RuntimeError('broken on purpose')\n"
    )
    with Load(port, fresh=1, keepalive=1, slow=0, max_seconds=120) as load:
        mark = server.mark()
        write_module(tmp_path / "version.py", broken)
        server.wait_for(r"app: broken import", 30, after=mark)
        set_version(tmp_path, "v3", "rename")  # while the broken code loads
        wait_until(lambda: http_get(port).version == "v3", 60, "the fix to be served")
        report = load.stop()
    assert report.failures == [], report.summary()
    assert "RuntimeError: broken on purpose" in server.output(mark)
    assert server.stop() == 0


@pytest.mark.timeout(120)
def test_a_save_while_an_old_generation_drains(start_server, tmp_path):
    project(tmp_path)
    server, port = hotrun(start_server, tmp_path)
    old = http_get(port).pid
    result = {}
    slow = threading.Thread(target=lambda: result.update(r=http_get(port, "/hello?sleep=4")))
    slow.start()
    server.wait_for(rf"app: a 4 s request started \(pid {old}\)", 10)
    mark = server.mark()
    set_version(tmp_path, "v2")
    upgraded(server, mark)  # generation 1 drains, its slow request in flight
    mark = server.mark()
    set_version(tmp_path, "v3", "rename")
    name, number = upgraded(server, mark)
    assert wait_served_by(port, server.generation_pids()[number]).version == "v3"
    joined(slow, 15, "the slow request")
    assert (result["r"].status, result["r"].pid, result["r"].version) == (200, old, "v1")
    assert server.stop() == 0


@pytest.mark.timeout(120)
def test_runhot_serves_a_saved_template(start_server, tmp_path):
    pytest.importorskip("django")
    site = tmp_path / "site"
    shutil.copytree(os.path.join(os.path.dirname(__file__), "..", "..", "example_django"), site)
    argv = [PYTHON, "manage.py", "runhot", "127.0.0.1:0", "--upgrade-interval", "0"]
    server = start_server(argv, cwd=str(site), env=ENV)
    port = server.wait_ready(60)
    server.wait_for(WATCHED.format(n=1), 30)
    template = next((site / "example" / "templates").rglob("*.html"))
    mark = server.mark()
    template.write_text(template.read_text() + "\n<!-- saved -->\n")
    name, number = upgraded(server, mark)
    assert name == template.name
    page = wait_served_by(port, server.generation_pids()[number], path="/")
    assert re.search(r"saved", page.body), page.body[-200:]
    assert server.stop() == 0
