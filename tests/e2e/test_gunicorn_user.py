"""``gunicorn -k grace_plugins.Worker --user nobody``: a master started as root, workers that
drop privileges. Every promise holds: each HUP is gated on the new workers' readiness, broken
code is rolled back without halting the master, the fix is served, nothing fails under load;
with a numeric uid, ``--umask 077`` (and a process umask of 077), ``--worker-tmp-dir
/dev/shm`` and gunicorn's default control socket as well."""

from __future__ import annotations

import os
import re

import pytest

from tests.harness import Load, grace_cli, http_get, wait_until
from tests.harness.gunicorn import (
    Gunicorn,
    assert_clean,
    control_socket,
    gunicorn_argv,
    version,
    write_code,
)
from tests.harness.nobody import NobodyPython, build, user_and_group

pytest.importorskip("gunicorn")
NOBODY = user_and_group()
pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="--user needs a master started as root"),
    pytest.mark.skipif(NOBODY is None, reason="no user nobody (and its group) on this system"),
]
#: A syntax error: what the issue's user met.
BROKEN = "VERSION = (\n"


def configs(uid: int, gid: int, user: str, group: str) -> dict[str, list[str]]:
    """What varies: how the user is named, and the settings that decide who may read what."""
    by_name = ["--user", user, "--group", group]
    return {
        "--user nobody": by_name,
        "numeric uid": ["--user", str(uid), "--group", str(gid)],
        "umask 077": [*by_name, "--umask", "077"],
        "--worker-tmp-dir /dev/shm": [*by_name, "--worker-tmp-dir", "/dev/shm"],
        "default control socket": by_name,
    }


CONFIGS = configs(*NOBODY) if NOBODY else {}


@pytest.fixture(scope="module")
def nobody_python():
    python = build()
    yield python
    python.remove()


@pytest.mark.timeout(150)
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_hups_with_workers_as_nobody(start_server, nobody_python: NobodyPython, config):
    """A good HUP (through ``grace-plugins reload``, which reads the master's state file), a
    broken one, then the fix, under load."""
    assert NOBODY is not None
    app_dir = nobody_python.app_dir(re.sub(r"\W+", "-", config).strip("-"))
    write_code(app_dir, version("v1"))
    env = {"PYTHONDONTWRITEBYTECODE": "1", **nobody_python.env()}
    argv = [nobody_python.executable, *gunicorn_argv(app_dir, *CONFIGS[config], apps=app_dir)[1:]]
    if config == "default control socket":  # $HOME/.gunicorn/gunicorn.ctl, HOME being ours
        if not control_socket(app_dir):
            pytest.skip("this gunicorn has no control socket (25.3 and later)")
        argv = _without_option(argv, "--control-socket")
        env.update(HOME=app_dir, XDG_RUNTIME_DIR="")
    if config == "umask 077":  # gunicorn's --umask, and the process's own
        argv = ["/bin/sh", "-c", 'umask 077 && exec "$@"', "sh", *argv]
    server = start_server(argv, cwd=app_dir, env=env, cls=Gunicorn)
    server.wait_ready()  # "generation 1 ready": the workers' records reached the gate
    assert {_effective_uid(pid) for pid in server.workers()} == {NOBODY[0]}
    with Load(server.port, fresh=2, keepalive=2, slow=1, slow_seconds=1.0) as load:
        write_code(app_dir, version("v2"))
        mark = server.mark()
        same_state = {k: v for k, v in env.items() if k == "XDG_RUNTIME_DIR"}  # as the master's
        good = grace_cli("reload", "--pid", str(server.pid), "--timeout", "60", env=same_state)
        assert good.returncode == 0, good.stdout + good.stderr
        assert good.stdout.startswith("upgraded: generation 2 ready"), good.stdout
        # the previous workers drained because generation 2 was ready, not on a SIGTERM
        pattern = r"\(generation 1\) drained [^(]*\(([^;]*);"
        wait_until(lambda: server.count(pattern, mark) == 2, 30, "both old workers' drain")
        drained = re.findall(pattern, server.output(mark))
        assert drained == ["generation 2 is ready"] * 2, server.output(mark)
        server.wait_until_workers(2, 30)  # and exited
        assert http_get(server.port).version == "v2"
        server.broken_hup_then_fix(app_dir, BROKEN, 3)  # the master never halts
        report = load.stop()
    assert_clean(report)
    assert server.stop() == 0


def _effective_uid(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        line = next(line for line in handle if line.startswith("Uid:"))
    return int(line.split()[2])  # the effective uid


def _without_option(argv: list[str], option: str) -> list[str]:
    at = argv.index(option)
    return argv[:at] + argv[at + 2 :]


@pytest.mark.timeout(120)
def test_a_temporary_directory_the_workers_cannot_reach(start_server, nobody_python):
    """``TMPDIR`` inside a directory private to root: the master checks that the workers' user
    can write its record directory, puts it elsewhere, and says so in one line; every promise
    holds."""
    assert NOBODY is not None
    app_dir = nobody_python.app_dir("private-tmpdir")
    private = os.path.join(app_dir, "private")
    os.mkdir(private, 0o700)
    write_code(app_dir, version("v1"))
    env = {"PYTHONDONTWRITEBYTECODE": "1", "TMPDIR": private, **nobody_python.env()}
    by_name = ["--user", NOBODY[2], "--group", NOBODY[3]]
    argv = [nobody_python.executable, *gunicorn_argv(app_dir, *by_name, apps=app_dir)[1:]]
    server = start_server(argv, cwd=app_dir, env=env, cls=Gunicorn)
    server.wait_ready()
    said = re.findall(
        r"cannot write in (\S+) .*; the record directory is (\S+) instead", server.output()
    )
    assert [place for place, _ in said] == [private], server.output()
    with Load(server.port, fresh=2, keepalive=2, slow=1, slow_seconds=1.0) as load:
        server.broken_hup_then_fix(app_dir, BROKEN, 2)
        report = load.stop()
    assert_clean(report)
    assert server.stop() == 0


#: ``appcode`` whose ready path (``/healthz``) writes which user answered it.
CHECKS_WHO = (
    "import os\n"
    "def status(environ):\n"
    "    if environ.get('PATH_INFO') == '/healthz':\n"
    "        here = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'checks')\n"
    "        with open(os.path.join(here, str(os.getpid())), 'w') as f:\n"
    "            f.write(str(os.geteuid()))\n"
    "    return '200 OK'\n"
)


@pytest.mark.timeout(120)
def test_preload_never_runs_a_request_with_the_masters_privileges(start_server, nobody_python):
    """With ``--preload`` the mold imports the app as the master does (gunicorn's own
    ``--preload`` imports it in the master), but it runs no request: under ``--user`` the
    ready check is each worker's, as that user."""
    assert NOBODY is not None
    app_dir = nobody_python.app_dir("preload-ready-check")
    checks = os.path.join(app_dir, "checks")
    os.mkdir(checks)
    os.chmod(checks, 0o777)
    write_code(app_dir, version("v1") + CHECKS_WHO)
    env = {"PYTHONDONTWRITEBYTECODE": "1", "GRACE_READY_PATH": "/healthz", **nobody_python.env()}
    by_name = ["--user", NOBODY[2], "--group", NOBODY[3], "--preload"]
    argv = [nobody_python.executable, *gunicorn_argv(app_dir, *by_name, apps=app_dir)[1:]]
    server = start_server(argv, cwd=app_dir, env=env, cls=Gunicorn)
    server.wait_ready()
    assert "the app is imported once, in mold" in server.output()
    answered = {}
    for name in os.listdir(checks):
        with open(os.path.join(checks, name)) as handle:
            answered[int(name)] = int(handle.read())
    assert set(server.workers()) <= set(answered), (answered, server.workers())
    assert set(answered.values()) == {NOBODY[0]}, answered
    assert server.stop() == 0
