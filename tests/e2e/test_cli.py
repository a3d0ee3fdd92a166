"""``grace-plugins reload`` / ``status``: block until the upgrade's outcome, report it."""

from __future__ import annotations

import os
import re
import stat

import pytest

from grace_plugins.state import state_dir
from tests.harness import PYTHON, Load, grace_cli, http_get, write_code
from tests.harness.core import SERVER, start

pytestmark = pytest.mark.timeout(60)


def test_reload_waits_for_success_and_for_rollback(start_server, tmp_path):
    write_code(tmp_path, "v1")
    pidfile = str(tmp_path / "server.pid")
    server = start_server(
        [PYTHON, SERVER, "127.0.0.1:0", "--ready=3", f"--pidfile={pidfile}"], cwd=tmp_path
    )
    port = server.wait_ready()

    write_code(tmp_path, "v2")
    good = grace_cli("reload", "--pidfile", pidfile)
    assert good.returncode == 0, good.stderr
    assert good.stdout.startswith("upgraded: generation 2 (pid ")
    new_pid = int(good.stdout.split("(pid ")[1].split(")")[0])
    first = http_get(port)  # reload returned once the old generation stopped accepting
    assert (first.pid, first.version) == (new_pid, "v2")

    write_code(tmp_path, "v3", "raise RuntimeError('broken')")
    bad = grace_cli("reload", "--pid", str(server.pid))
    assert bad.returncode == 1
    assert bad.stderr.startswith("rolled back: generation 3 ")
    assert http_get(port).version == "v2"  # still up, old code

    wrong = grace_cli("reload", "--pid", str(new_pid))  # the generation, not the supervisor
    assert wrong.returncode == 2 and wrong.stderr.count("\n") == 1, wrong
    assert f"use --pid {server.pid} (or its pidfile)" in wrong.stderr, wrong.stderr
    assert http_get(port).pid == new_pid  # nothing was signalled

    shown = grace_cli("status", "--pidfile", pidfile)
    assert shown.returncode == 0
    assert f"supervisor pid {server.pid}" in shown.stdout
    assert f"serving: generation 2 (pid {new_pid})" in shown.stdout
    assert "upgrades finished: 2" in shown.stdout
    assert "last upgrade: rolled_back" in shown.stdout
    assert server.stop() == 0
    assert not os.path.exists(os.path.join(state_dir(), f"{server.pid}.json"))


def test_reload_finds_a_server_started_with_another_environment(start_server, tmp_path):
    """A service has no ``XDG_RUNTIME_DIR`` and may set ``TMPDIR``; the login shell that runs
    ``reload`` and ``status`` has its own (this test process's): the state is found where the
    server wrote it."""
    write_code(tmp_path, "v1")
    service_tmp = tmp_path / "service-tmp"
    service_tmp.mkdir()
    service_env = {"XDG_RUNTIME_DIR": "", "TMPDIR": str(service_tmp)}
    server = start_server(
        [PYTHON, SERVER, "127.0.0.1:0", "--ready=3"], cwd=tmp_path, env=service_env
    )
    port = server.wait_ready()
    assert (service_tmp / f"grace_plugins-{os.getuid()}" / f"{server.pid}.json").exists()
    assert not os.path.exists(os.path.join(state_dir(), f"{server.pid}.json"))

    write_code(tmp_path, "v2")
    good = grace_cli("reload", "--pid", str(server.pid))
    assert good.returncode == 0, good.stderr
    assert http_get(port).version == "v2"
    shown = grace_cli("status", "--pid", str(server.pid))
    assert shown.returncode == 0, shown.stderr
    assert "upgrades finished: 1" in shown.stdout
    assert server.stop() == 0


def test_a_stale_runtime_directory_does_not_keep_a_server_from_starting(start_server, tmp_path):
    """``su`` and a finished login leave ``XDG_RUNTIME_DIR`` naming a directory that is gone:
    the state goes to the temporary directory, where ``status`` finds it."""
    write_code(tmp_path, "v1")
    gone = {"XDG_RUNTIME_DIR": str(tmp_path / "gone"), "TMPDIR": str(tmp_path)}
    server = start_server([PYTHON, SERVER, "127.0.0.1:0", "--ready=3"], cwd=tmp_path, env=gone)
    server.wait_ready()
    shown = grace_cli("status", "--pid", str(server.pid), env=gone)
    assert shown.returncode == 0 and f"supervisor pid {server.pid}" in shown.stdout, shown
    assert (tmp_path / f"grace_plugins-{os.getuid()}" / f"{server.pid}.json").exists()
    assert server.stop() == 0


def test_the_first_request_after_reload_meets_the_new_code(start_server, tmp_path):
    """A smoke test right after ``reload`` returns 0 meets the new code, every time: the
    outcome is recorded once the old generation no longer accepts, not when the new one is
    ready (the old one may still be draining a slow request then)."""
    write_code(tmp_path, "v1")
    server = start(start_server, tmp_path, ready=20, interval=0)
    with Load(server.port, fresh=0, keepalive=1, slow=1, slow_seconds=0.5) as load:
        for number in range(2, 7):
            write_code(tmp_path, f"v{number}")
            reload = grace_cli("reload", "--pid", str(server.pid), "--timeout", "20", timeout=30)
            assert reload.returncode == 0, reload
            new_pid = int(reload.stdout.split("(pid ")[1].split(")")[0])
            first = http_get(server.port)
            assert (first.pid, first.version) == (new_pid, f"v{number}"), reload.stdout
        report = load.stop()
    assert report.failures == [], report.summary()
    assert report.slow_completed == report.slow_started >= 1, report.summary()
    assert server.stop() == 0


def _spoil(kind: str, path, elsewhere) -> None:
    """Make *path* a state directory grace_plugins must refuse."""
    if kind == "not-yours":
        path.mkdir(mode=0o700)
        os.chown(path, 65534, 65534)  # nobody's (the suite runs as root)
    elif kind == "open":
        path.mkdir()
        path.chmod(0o755)
    else:
        elsewhere.mkdir(mode=0o700)
        path.symlink_to(elsewhere)


@pytest.mark.parametrize(
    ("kind", "problem"),
    [
        ("not-yours", r"is not a directory owned by you: remove it and retry\."),
        ("open", r"is accessible by other users: chmod 700 it and retry\."),
        ("symlink", r"is not a directory owned by you: remove it and retry\."),
    ],
)
def test_state_directory_refused_by_server_and_status(start_server, tmp_path, kind, problem):
    """A state directory someone else could read or plant files in is never used: the server
    says so in one line and serves anyway; ``status`` exits 2 with that one line."""
    if kind == "not-yours" and os.getuid() != 0:
        pytest.skip("needs root to give a directory to another user")
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    bad = runtime / f"grace_plugins-{os.getuid()}"
    _spoil(kind, bad, tmp_path / "elsewhere")
    before = sorted(os.listdir(bad))
    app = tmp_path / "app"
    app.mkdir()
    write_code(app, "v1")
    env = {"XDG_RUNTIME_DIR": str(runtime)}
    server = start_server([PYTHON, SERVER, "127.0.0.1:0"], cwd=app, env=env)
    port = server.wait_ready()
    line = server.wait_for(r"no state file for grace-plugins reload/status: (.*)", 5)
    assert re.fullmatch(re.escape(str(bad)) + " " + problem, line.group(1)), line.group(0)
    assert http_get(port).version == "v1"

    shown = grace_cli("status", "--pid", str(server.pid), env=env)
    assert shown.returncode == 2, shown
    lines = shown.stderr.strip().splitlines()
    assert len(lines) == 1 and re.fullmatch(
        "Error: " + re.escape(str(bad)) + " " + problem, lines[0]
    ), shown.stderr
    reload = grace_cli("reload", "--pid", str(server.pid), env=env)
    assert reload.returncode == 2 and reload.stderr == shown.stderr
    assert server.stop() == 0
    assert sorted(os.listdir(bad)) == before  # nothing written through it
    assert bad.is_symlink() == (kind == "symlink")
    if kind == "open":
        assert stat.S_IMODE(bad.stat().st_mode) == 0o755  # left as found: the user decides


def test_reload_errors_are_one_line(tmp_path):
    missing = grace_cli("reload", "--pidfile", str(tmp_path / "none.pid"))
    assert missing.returncode == 7 and "Cannot read a pid" in missing.stderr
    not_ours = grace_cli("reload", "--pid", str(os.getpid()))
    assert not_ours.returncode == 2 and "is not a grace_plugins supervisor" in not_ours.stderr
    for result in (missing, not_ours):
        assert len(result.stderr.strip().splitlines()) == 1
