"""What crosses the process boundary, through the core test server (tests/apps/core_server.py)
and small programs: a generation inherits only its listener and its channel, nothing reaches
the programs an app starts, malformed inherited inputs are one-line errors, the program is
re-run as Python ran it, and the core imports no web framework.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from tests.harness import LINUX_PROC, PYTHON, ROOT, fd_links, http_get
from tests.harness.core import SERVER, start
from tests.harness.inherit import MALFORMED_INPUTS, run_with_inherited


@pytest.mark.timeout(60)
def test_generation_inherits_only_listener_and_channel(start_server, app_dir):
    if not LINUX_PROC:
        pytest.skip("needs /proc")
    # an fd the server inherits (a launcher's log file, a shell's 3>file) stays with the
    # supervisor, which keeps it across its own exec; a generation must not get it
    secret = app_dir / "supervisor-only.log"
    with open(secret, "w") as held:
        os.set_inheritable(held.fileno(), True)
        server = start(start_server, app_dir, pass_fds=[held.fileno()])
    sup_links = fd_links(server.pid)
    assert str(secret) in sup_links  # the supervisor really holds it
    gen = http_get(server.port).pid
    gen_links = fd_links(gen)
    assert str(secret) not in gen_links
    # a program the app starts (even with close_fds=False) gets no listener and no variable
    probe = json.loads(http_get(server.port, "/spawn").body)
    assert probe["env"] == []
    assert max(probe["fds"]) <= 3, probe  # 0-2 and the probe's own listdir fd
    assert server.stop() == 0


# -- moved from the unit tests: they start a process ---------------------------------------
def test_import_pulls_in_no_web_framework():
    code = (
        "import sys, grace_plugins, grace_plugins.runner, grace_plugins.tracked_server;"
        "bad = [m for m in ('flask', 'werkzeug', 'django', 'gunicorn') if m in sys.modules];"
        "assert not bad, bad"
    )
    subprocess.run([PYTHON, "-c", code], check=True, timeout=20)


# -- re-running the program ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("argv_tail", "expected_tail"),
    [
        (["-X", "utf8", "prog.py", "--flag"], ["-X", "utf8", "{dir}/prog.py", "--flag"]),
        (["-m", "progpkg", "a"], ["-m", "progpkg", "a"]),
        (["-c", "import progpkg.__main__", "b"], ["-c", "import progpkg.__main__", "b"]),
    ],
    ids=["script", "module", "command"],
)
def test_program_argv_reproduces_how_python_was_started(tmp_path, argv_tail, expected_tail):
    report = "import json, grace_plugins.cmdline as c; print(json.dumps(c.program_argv()))"
    (tmp_path / "prog.py").write_text(report)
    (tmp_path / "progpkg").mkdir()
    (tmp_path / "progpkg" / "__init__.py").write_text("")
    (tmp_path / "progpkg" / "__main__.py").write_text(report)
    result = subprocess.run(
        [sys.executable, *argv_tail],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=20,
        env={
            **os.environ,
            "PYTHONPATH": ROOT,
        },
    )
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert got[0] == sys.executable
    assert got[1:] == [part.format(dir=tmp_path) for part in expected_tail]


def test_non_posix_platform_is_a_clear_error():
    # A child pretends to be Windows (os.name is the platform seam): one line, exit status 2.
    code = (
        "import os; from grace_plugins.runner import run_or_exit; os.name = 'nt';"
        " run_or_exit(lambda c: None, ['8000'])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=20,
        env={
            **os.environ,
            "PYTHONPATH": ROOT,
        },
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "needs POSIX signals and file descriptor passing (Linux or macOS)" in result.stderr


# -- malformed inherited inputs, through the program as a user starts it -------------------------
@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", list(MALFORMED_INPUTS))
def test_malformed_inherited_input_through_the_server(app_dir, case):
    """Each malformed input a user can meet (a stale variable in a shell, a unit file wrong):
    one line naming it and what to do, exit status 2, no traceback, nothing served."""
    env, kind, message = MALFORMED_INPUTS[case]
    status, stderr = run_with_inherited([PYTHON, SERVER, "127.0.0.1:0"], env, kind, app_dir)
    lines = stderr.strip().splitlines()
    assert status == 2, stderr
    assert len(lines) == 1 and re.search(message, lines[0]), stderr
    assert "Traceback" not in stderr
