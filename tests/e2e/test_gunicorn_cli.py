"""``gunicorn -k grace_plugins.Worker`` as gunicorn's users run it: the import, the settings,
the hooks of gunicorn.conf.py, and the settings it refuses or warns about."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time

import pytest

from tests.harness import ROOT, http_get, wait_until
from tests.harness.gunicorn import gunicorn_argv, start_gunicorn, version, write_code
from tests.harness.inherit import MALFORMED_INPUTS, run_with_inherited

pytest.importorskip("gunicorn")


def test_import_does_not_load_gunicorn():
    code = (
        "import os, sys, grace_plugins; assert 'gunicorn' not in sys.modules;"
        " w = grace_plugins.Worker; assert 'gunicorn' in sys.modules; print(w.__name__);"
        # only a gunicorn master takes NOTIFY_SOCKET (see grace_plugins.gunicorn.notify)
        " assert os.environ['NOTIFY_SOCKET'] == '@not-a-master'"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        env={**os.environ, "NOTIFY_SOCKET": "@not-a-master"},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "Worker"


@pytest.mark.timeout(60)
def test_user_hooks_run_with_ours(start_server, tmp_path):
    (tmp_path / "gunicorn.conf.py").write_text(
        "def on_reload(server):\n    print('USER on_reload', flush=True)\n"
        "def post_worker_init(worker):\n    print('USER post_worker_init', flush=True)\n"
        "def worker_exit(server, worker):\n    print('USER worker_exit', flush=True)\n"
        "def child_exit(server, worker):\n    print('USER child_exit', flush=True)\n"
    )
    server = start_gunicorn(start_server, tmp_path, "-c", str(tmp_path / "gunicorn.conf.py"))
    write_code(tmp_path, version("v2"))
    server.hup(2)
    assert http_get(server.port).version == "v2"
    out = server.output()
    assert out.count("USER post_worker_init") == 4
    assert out.count("USER on_reload") == 1
    wait_until(lambda: server.output().count("USER child_exit") == 2, 10, "child_exit x2")
    assert server.output().count("USER worker_exit") >= 2


@pytest.mark.timeout(60)
def test_gunicorn_settings_keep_their_meaning(start_server, tmp_path):
    server = start_gunicorn(
        start_server,
        tmp_path,
        "--access-logfile",
        "-",
        "--limit-request-line",
        "200",
        workers=1,
        threads=1,
    )
    assert http_get(server.port, "/hello?from=access-log").status == 200
    server.wait_for(r'"GET /hello\?from=access-log HTTP/1.1" 200', 10)
    assert http_get(server.port, "/" + "x" * 300).status in (400, 414)  # 414 since 25
    # threads=1: one request at a time, the second waits for the first
    start = time.monotonic()
    threads = [
        threading.Thread(target=http_get, args=(server.port, "/hello?sleep=0.5")) for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert time.monotonic() - start >= 0.95


@pytest.mark.timeout(60)
def test_reuse_port_is_refused(start_server, tmp_path):
    server = start_gunicorn(start_server, tmp_path, "--reuse-port", ready=False)
    assert server.proc.wait(30) != 0
    server.wait_for(r"does not support --reuse-port", 10)


@pytest.mark.timeout(60)
def test_preload_without_molds_hup_says_to_use_usr2(start_server, tmp_path):
    env = {"GRACE_MOLDS": "off"}
    server = start_gunicorn(start_server, tmp_path, "--preload", env=env)
    write_code(tmp_path, version("v2"))
    server.hup(2)
    assert "--preload with GRACE_MOLDS=off" in server.output() and "USR2" in server.output()
    assert "the app is imported once, in mold" not in server.output()
    assert http_get(server.port).version == "v1"  # the master's cached import


@pytest.mark.timeout(60)
def test_bad_grace_molds_is_refused(start_server, tmp_path):
    env = {"GRACE_MOLDS": "sometimes"}
    server = start_gunicorn(start_server, tmp_path, "--preload", env=env, ready=False)
    assert server.proc.wait(30) != 0
    server.wait_for(r"Error: GRACE_MOLDS='sometimes' is neither on nor off\. Set it to off", 10)
    assert server.count("is neither on nor off") == 1, server.output()  # said once


#: The malformed inputs gunicorn itself reads (it adopts systemd's sockets; sockets meant for
#: another process, or a missing LISTEN_PID, it ignores, and it does not read LISTEN_FDNAMES).
GUNICORN_READS = [
    case for case in MALFORMED_INPUTS if case.startswith(("fd-", "listen-fds", "listen-pid-not"))
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", GUNICORN_READS)
def test_malformed_systemd_sockets_give_one_line(tmp_path, case):
    """Checked before gunicorn adopts them (it would fail from deep inside, with a traceback):
    one line, and gunicorn's exit status for a configuration error."""
    write_code(tmp_path, version("v1"))
    env, kind, message = MALFORMED_INPUTS[case]
    status, stderr = run_with_inherited(gunicorn_argv(tmp_path), env, kind, tmp_path)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert status == 1, stderr
    assert "Traceback" not in stderr
    assert re.search(message, lines[-1]) and lines[-1].startswith("Error: "), stderr
