"""``grace-plugins reload`` / ``status``: block until the upgrade's outcome, report it."""

from __future__ import annotations

import os
import stat

import pytest

from grace_plugins.state import state_dir
from tests.e2e.test_core_e2e import SERVER, write_code
from tests.harness import PYTHON, grace_cli, http_get, wait_served_by

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
    assert wait_served_by(port, new_pid).version == "v2"

    write_code(tmp_path, "v3", "raise RuntimeError('broken')")
    bad = grace_cli("reload", "--pid", str(server.pid))
    assert bad.returncode == 1
    assert bad.stderr.startswith("rolled back: generation 3 ")
    assert http_get(port).version == "v2"  # still up, old code

    shown = grace_cli("status", "--pidfile", pidfile)
    assert shown.returncode == 0
    assert f"supervisor pid {server.pid}" in shown.stdout
    assert f"serving: generation 2 (pid {new_pid})" in shown.stdout
    assert "upgrades finished: 2" in shown.stdout
    assert "last upgrade: rolled_back" in shown.stdout
    assert server.stop() == 0
    assert not os.path.exists(os.path.join(state_dir(), f"{server.pid}.json"))


def test_state_directory_is_private():
    mode = stat.S_IMODE(os.stat(state_dir()).st_mode)
    assert mode & 0o077 == 0


def test_reload_errors_are_one_line(tmp_path):
    missing = grace_cli("reload", "--pidfile", str(tmp_path / "none.pid"))
    assert missing.returncode == 7 and "Cannot read a pid" in missing.stderr
    not_ours = grace_cli("reload", "--pid", str(os.getpid()))
    assert not_ours.returncode == 2 and "is not a grace_plugins supervisor" in not_ours.stderr
    for result in (missing, not_ours):
        assert len(result.stderr.strip().splitlines()) == 1
