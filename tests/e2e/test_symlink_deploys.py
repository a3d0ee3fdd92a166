"""Release-directory deploys (Capistrano's layout): each release in a directory of its own, a
``current`` symlink pointing at the one that serves, the server started in ``current``. A deploy
points ``current`` at the new release, then asks for an upgrade: the new generation must run the
new release, as gunicorn's workers and re-exec do (they start in ``$PWD``, not in the physical
directory the old release's process entered)."""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import subprocess
import sys
import sysconfig

import pytest

from tests.harness import http_get, wait_served_by
from tests.harness.code import write_code
from tests.harness.core import start
from tests.harness.django_site import copy_site
from tests.harness.django_site import runhot as start_runhot
from tests.harness.django_site import set_version as set_django_version
from tests.harness.flask_site import FLASK, seed_app
from tests.harness.gunicorn import start_gunicorn, version
from tests.harness.gunicorn import write_code as write_gunicorn_code
from tests.harness.server import PYTHON, ROOT

WARM = sys.platform.startswith("linux")

pytestmark = pytest.mark.timeout(90)


def releases(base: pathlib.Path, make) -> pathlib.Path:
    """``releases/r1`` and ``releases/r2`` (``make(directory, version)`` fills each) and
    ``current`` pointing at r1; return ``current``."""
    for number in (1, 2):
        make(base / "releases" / f"r{number}", f"v{number}")
    current = base / "current"
    current.symlink_to(base / "releases" / "r1")
    return current


def switch(current: pathlib.Path, release: str) -> None:
    """Point ``current`` at *release* at once, as a deploy does (a new link renamed over it)."""
    new = current.with_name("current.new")
    new.symlink_to(current.parent / "releases" / release)
    os.replace(new, current)


def where(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/cwd")


def core_server_in(start_server, current: pathlib.Path, python: str, *extra: str):
    """The core test server run by interpreter *python* in *current* (``$PWD`` spelt through
    the symlink, as a shell's ``cd`` leaves it), once its first generation is ready."""
    argv = [python, os.path.join(ROOT, "tests", "apps", "core_server.py"), "127.0.0.1:0"]
    server = start_server([*argv, "--interval=0.1", *extra], cwd=current, env={"PWD": str(current)})
    server.wait_ready()
    return server


def serves_after_switch(server, current: pathlib.Path, release: str, version: str) -> None:
    """Point *current* at *release*, HUP: the new generation serves *version*."""
    switch(current, release)
    new = server.upgrade()
    assert wait_served_by(server.port, new).version == version


def core_release(directory: pathlib.Path, version: str) -> None:
    directory.mkdir(parents=True)
    write_code(directory, version)


@pytest.mark.parametrize("warm", [True, False], ids=["warm", "cold"])
def test_a_hup_after_the_symlink_switch_serves_the_new_release(start_server, tmp_path, warm):
    current = releases(tmp_path, core_release)
    extra = () if warm else ("--no-warm",)
    server = start(start_server, current, extra=extra, env={"PWD": str(current)})
    first = http_get(server.port)
    assert first.version == "v1"
    switch(current, "r2")
    new = server.upgrade()
    assert wait_served_by(server.port, new).version == "v2"
    if os.path.isdir("/proc"):
        assert where(new) == str(tmp_path / "releases" / "r2")
    switch(current, "r1")  # a rollback of the deploy is a switch back
    back = server.upgrade()
    assert wait_served_by(server.port, back).version == "v1"
    switch(current, "r2")
    shutil.rmtree(tmp_path / "releases" / "r1")  # the deploy tool prunes old releases
    again = server.upgrade()  # the supervisor's own directory is gone: nothing needs it
    assert wait_served_by(server.port, again).version == "v2"
    assert server.stop() == 0


def test_usr2_after_the_symlink_switch_runs_the_new_release(start_server, tmp_path):
    current = releases(tmp_path, core_release)
    server = start(start_server, current, env={"PWD": str(current)})
    assert http_get(server.port).version == "v1"
    switch(current, "r2")
    mark = server.mark()
    os.kill(server.pid, signal.SIGUSR2)
    server.wait_for(r"supervisor re-executed \(pid unchanged\); adopted generation", 20, mark)
    found = server.wait_for(r"generation \d+ \(pid (\d+)\) ready after", 20, mark)
    assert wait_served_by(server.port, int(found.group(1))).version == "v2"
    if os.path.isdir("/proc"):  # the supervisor itself moved: its next upgrades start there
        assert where(server.pid) == str(tmp_path / "releases" / "r2")
    shutil.rmtree(tmp_path / "releases" / "r1")
    again = server.upgrade()
    assert wait_served_by(server.port, again).version == "v2"
    assert server.stop() == 0


@pytest.mark.skipif(not WARM, reason="warm start needs Linux")
def test_a_template_made_before_the_switch_never_forks_the_old_release(start_server, tmp_path):
    # the project on a relative PYTHONPATH: the template's sys.path names releases/r1/src
    def src_release(directory: pathlib.Path, version: str) -> None:
        (directory / "src").mkdir(parents=True)
        write_code(directory / "src", version)

    current = releases(tmp_path, src_release)
    env = {"PWD": str(current), "PYTHONPATH": os.pathsep.join(["src", ROOT])}
    server = start(start_server, current, env=env)
    server.wait_warm()  # made in r1
    assert http_get(server.port).version == "v1"
    switch(current, "r2")
    mark = server.mark()
    new = server.upgrade()
    assert wait_served_by(server.port, new).version == "v2"
    server.wait_for(
        r"leads to .*releases/r2 now, not to .*releases/r1; the template will be", 5, mark
    )
    mark = server.mark()
    server.wait_for(r"warm start: template \(pid \d+\) ready after", 30, mark)  # made in r2
    again = server.upgrade()
    server.wait_for(rf"warm start: pid {again} forked from the template", 5, mark)
    assert wait_served_by(server.port, again).version == "v2"
    assert server.stop() == 0


def venv_release(directory: pathlib.Path, version: str) -> None:
    """A release with a virtual environment of its own (``venv``), as a deploy makes it in the
    release's directory: its library ``mylib`` says which release it is; the code serves its
    version and its library's."""
    directory.mkdir(parents=True)
    subprocess.run(
        [PYTHON, "-m", "venv", "--without-pip", str(directory / "venv")], check=True, timeout=60
    )
    site = subprocess.run(
        [str(directory / "venv" / "bin" / "python"), "-c", "import sysconfig;"
         "print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout.strip()  # fmt: skip
    ours = sysconfig.get_paths()["purelib"]  # grace_plugins and the rest, from this environment
    pathlib.Path(site, "zz_tests.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    pathlib.Path(site, "mylib.py").write_text(f"LIB = 'lib-{version}'\n")
    pathlib.Path(site, "mylib_lazy.py").write_text(f"LIB = 'lazy-{version}'\n")
    write_code(directory, version, body="import mylib\nVERSION = f'{VERSION}+{mylib.LIB}'")


def lazy_code(directory: pathlib.Path, version: str) -> None:
    """``appcode`` whose ``VERSION`` imports ``mylib_lazy`` at the first request."""
    body = (
        "del VERSION\n"
        "def __getattr__(name):\n"
        "    if name != 'VERSION':\n"
        "        raise AttributeError(name)\n"
        "    import mylib_lazy\n"
        f"    return '{version}+' + mylib_lazy.LIB\n"
    )
    write_code(directory, version, body=body)


@pytest.mark.parametrize("warm", [True, False], ids=["warm", "cold"])
def test_each_release_runs_its_own_virtual_environment(start_server, tmp_path, warm):
    # started by the interpreter's path in releases/r1 (as a console script's first line
    # names it): the next release runs its own, and the first one may be deleted
    current = releases(tmp_path, venv_release)
    python = str(tmp_path / "releases" / "r1" / "venv" / "bin" / "python")
    server = core_server_in(start_server, current, python, *([] if warm else ["--no-warm"]))
    assert http_get(server.port).version == "v1+lib-v1"
    serves_after_switch(server, current, "r2", "v2+lib-v2")
    shutil.rmtree(tmp_path / "releases" / "r1")
    again = server.upgrade()
    assert wait_served_by(server.port, again).version == "v2+lib-v2"
    assert server.stop() == 0


def test_a_running_generation_keeps_importing_from_its_own_release(start_server, tmp_path):
    # a switch without an upgrade yet: what the old generation imports later is still its own
    current = releases(tmp_path, venv_release)
    for number in (1, 2):
        lazy_code(tmp_path / "releases" / f"r{number}", f"v{number}")
    python = str(current / "venv" / "bin" / "python")  # spelt through current, from the start
    server = core_server_in(start_server, current, python, "--no-warm")
    switch(current, "r2")
    assert http_get(server.port).version == "v1+lazy-v1"  # its first import of mylib_lazy
    serves_after_switch(server, current, "r2", "v2+lazy-v2")
    assert server.stop() == 0


def test_an_interpreter_reached_through_dotdot_from_the_release(start_server, tmp_path):
    # Capistrano's shared directory: ../../shared/venv/bin/python, run in current; the code
    # imports a library only that environment has
    venv_release(tmp_path / "app" / "shared", "shared")  # releases/r1/../.. is app

    def release(directory: pathlib.Path, version: str) -> None:
        directory.mkdir(parents=True)
        write_code(directory, version, body="import mylib\nVERSION = f'{VERSION}+{mylib.LIB}'")

    current = releases(tmp_path / "app", release)
    server = core_server_in(start_server, current, "../../shared/venv/bin/python")
    assert http_get(server.port).version == "v1+lib-shared"
    serves_after_switch(server, current, "r2", "v2+lib-shared")
    assert server.stop() == 0


@pytest.mark.skipif(not WARM, reason="warm start needs Linux")
def test_warm_start_comes_back_once_the_first_release_is_deleted(start_server, tmp_path):
    def three(base: pathlib.Path, version: str) -> None:
        core_release(base, version)
        if version == "v2":
            core_release(base.with_name("r3"), "v3")

    current = releases(tmp_path, three)
    server = start(start_server, current, env={"PWD": str(current)})
    server.wait_warm()
    for release in ("r2", "r3"):
        switch(current, release)
        mark = server.mark()
        server.upgrade()  # cold: the template was made in the release before
        server.wait_for(r"warm start: template \(pid \d+\) ready after", 30, mark)
        if release == "r2":
            shutil.rmtree(tmp_path / "releases" / "r1")  # the supervisor's own directory
    mark = server.mark()
    new = server.upgrade()
    server.wait_for(rf"warm start: pid {new} forked from the template", 5, mark)
    assert wait_served_by(server.port, new).version == "v3"
    assert server.stop() == 0


def test_a_script_path_through_dotdot_after_a_symlink(start_server, tmp_path):
    # proj/app -> src/app, the server started there as ../tools/server.py (src/tools)
    (tmp_path / "src" / "tools").mkdir(parents=True)
    shutil.copy(os.path.join(ROOT, "tests", "apps", "core_server.py"), tmp_path / "src" / "tools")
    (tmp_path / "src" / "app").mkdir()
    write_code(tmp_path / "src" / "app", "v1")
    (tmp_path / "proj").mkdir()
    app = tmp_path / "proj" / "app"
    app.symlink_to(tmp_path / "src" / "app")
    argv = [PYTHON, "../tools/core_server.py", "127.0.0.1:0", "--interval=0.1"]
    server = start_server(argv, cwd=app, env={"PWD": str(app)})
    server.wait_ready()
    new = server.upgrade()
    assert wait_served_by(server.port, new).version == "v1"
    assert server.stop() == 0


def test_a_relative_pidfile_stays_the_one_first_written_across_usr2(start_server, tmp_path):
    current = releases(tmp_path, core_release)
    server = start(start_server, current, extra=("--pidfile", "app.pid"), env={"PWD": str(current)})
    first = tmp_path / "releases" / "r1" / "app.pid"
    assert first.read_text().strip() == str(server.pid)
    switch(current, "r2")
    mark = server.mark()
    os.kill(server.pid, signal.SIGUSR2)
    found = server.wait_for(r"generation \d+ \(pid (\d+)\) ready after", 20, mark)
    assert wait_served_by(server.port, int(found.group(1))).version == "v2"
    assert first.read_text().strip() == str(server.pid)
    assert not (tmp_path / "releases" / "r2" / "app.pid").exists()
    assert server.stop() == 0
    assert not first.exists()


def flask_release(directory: pathlib.Path, version: str) -> None:
    seed_app(directory, version)


@pytest.mark.skipif(not os.path.exists(FLASK), reason="flask is not installed")
def test_flask_hotrun_follows_the_symlink(start_server, tmp_path):
    current = releases(tmp_path, flask_release)
    server = start_server(
        [FLASK, "--app", "app.py", "hotrun", "-p", "0"], cwd=str(current), env={"PWD": str(current)}
    )
    port = server.wait_ready(30)
    assert http_get(port).version == "v1"
    switch(current, "r2")
    new = server.upgrade()
    assert wait_served_by(port, new).version == "v2"
    assert server.stop() == 0


def test_django_runhot_follows_the_symlink(start_server, tmp_path):
    def django_release(directory: pathlib.Path, version: str) -> None:
        site = copy_site(tmp_path / f"copy-{version}")
        shutil.move(site, directory)
        set_django_version(directory, version)

    current = releases(tmp_path, django_release)
    server = start_runhot(start_server, current, env={"PWD": str(current)})
    assert http_get(server.port).version == "v1"
    switch(current, "r2")
    new = server.upgrade(60)
    assert wait_served_by(server.port, new).version == "v2"
    assert server.stop() == 0


@pytest.mark.parametrize("preload", [False, True], ids=["imported-by-workers", "preload"])
def test_gunicorn_with_our_worker_follows_the_symlink(start_server, tmp_path, preload):
    # gunicorn's own way (its --chdir, in sys.path), kept by our worker and by the molds; and
    # a worker that imports after the switch (lazymod, at its first request) keeps to its own
    # release, where gunicorn's would import the new one's
    lazy = (
        "def __getattr__(name):\n"
        "    if name != 'VERSION':\n"
        "        raise AttributeError(name)\n"
        "    import lazymod\n"
        "    return lazymod.VERSION\n"
    )

    def gunicorn_release(directory: pathlib.Path, release: str) -> None:
        directory.mkdir(parents=True)
        write_gunicorn_code(directory, lazy)
        (directory / "lazymod.py").write_text(version(release))

    current = releases(tmp_path, gunicorn_release)
    extra = ("--preload",) if preload else ()
    server = start_gunicorn(start_server, current, *extra, code=lazy, workers=1)
    switch(current, "r2")
    assert http_get(server.port).version == "v1"  # its first request: lazymod imported now
    (pid,) = server.hup(2)
    assert wait_served_by(server.port, pid).version == "v2"
    assert server.stop() == 0
