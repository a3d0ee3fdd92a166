"""``kill -USR2`` with ``gunicorn -k grace_plugins.Worker``: the new master retires the old one
by itself once its workers are ready (gunicorn alone leaves two masters serving). systemd's
side: tests/e2e/test_systemd.py."""

from __future__ import annotations

import os
import signal

import pytest

from tests.harness import Load, gone_or_zombie, http_get, wait_until
from tests.harness.gunicorn import assert_clean, start_gunicorn, version, write_code

pytest.importorskip("gunicorn")

#: the new master's first generation, imported once in a mold (``--preload``)
IMPORTED_IN_MOLD = r"generation 1: the app is imported once, in mold (\d+)"


@pytest.mark.timeout(90)
@pytest.mark.parametrize("preload", [False, True], ids=["import", "--preload"])
def test_usr2_new_master_retires_the_old_one(start_server, tmp_path, preload):
    """With ``--preload`` too: the new master's first generation imports in a mold of its
    own (never in either master), and the old master retires once it is ready."""
    pidfile = tmp_path / "gunicorn.pid"
    extra = ["--preload"] if preload else []
    server = start_gunicorn(start_server, tmp_path, "--pid", str(pidfile), *extra)
    old_master = server.pid
    assert int(pidfile.read_text()) == old_master
    with Load(server.port, fresh=2, keepalive=2, slow=1, slow_seconds=1.0) as load:
        write_code(tmp_path, version("v2"))
        mark = server.mark()
        os.kill(old_master, signal.SIGUSR2)
        found = server.wait_for(r"USR2: the new master (\d+) is ready", 30, after=mark)
        new_master = int(found.group(1))
        if preload:
            molded = server.wait_for(IMPORTED_IN_MOLD, 10, after=mark)
            assert int(molded.group(1)) not in (old_master, new_master), molded.string
        assert server.proc.wait(30) == 0  # the old master retired by itself
        wait_until(
            lambda: pidfile.exists() and pidfile.read_text().strip() == str(new_master),
            10,
            "the pidfile to name the new master",
        )
        resp = http_get(server.port)
        assert resp.version == "v2"
        report = load.stop()
    assert_clean(report)
    os.kill(new_master, signal.SIGTERM)
    wait_until(lambda: gone_or_zombie(new_master), 30, "the new master to exit")
