"""A failed first start reads like the framework's own (issue 20, item 7): the framework's
message once, then one line of ours, and the exit status the framework's command would have.
No banner says the server runs when it never did.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from tests.harness import PYTHON, ROOT, server_env

FLASK = os.path.join(os.path.dirname(sys.executable), "flask")
OURS = re.compile(r"^\[grace_plugins\] ", re.M)


def run(argv: list[str], cwd: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=cwd, env=server_env(), capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.timeout(90)
def test_flask_hotrun_with_an_app_that_does_not_import(tmp_path):
    if not os.path.exists(FLASK):
        pytest.skip("flask is not installed")
    theirs = run([FLASK, "--app", "nonexist", "run", "-p", "0"], str(tmp_path))
    ours = run([FLASK, "--app", "nonexist", "hotrun", "-p", "0"], str(tmp_path))
    assert ours.returncode == theirs.returncode == 2
    out = ours.stdout + ours.stderr
    assert out.count("Error: Could not import 'nonexist'.") == 1, out
    assert "Running on" not in out and "Serving Flask app" not in out  # nothing ever ran
    lines = OURS.findall(out)
    assert len(lines) <= 2, out  # "starting generation 1", "the app failed to start: ..."
    assert re.search(
        r"the app failed to start: generation 1 \(pid \d+\) exited \(exit status 2\)", out
    )
    assert "ExitCode" not in out and "Traceback" not in out


@pytest.mark.timeout(90)
def test_runhot_with_a_failing_system_check_exits_as_runserver(tmp_path):
    pytest.importorskip("django")
    site = tmp_path / "site"
    shutil.copytree(os.path.join(ROOT, "example_django"), site)
    views = site / "example" / "views.py"
    views.write_text(views.read_text().replace('VERSION = "v1"', 'VERSION = ""'))
    theirs = run([PYTHON, "manage.py", "runserver", "127.0.0.1:0", "--noreload"], str(site))
    ours = run([PYTHON, "manage.py", "runhot", "127.0.0.1:0"], str(site))
    assert ours.returncode == theirs.returncode == 1
    for result in (ours, theirs):
        assert "SystemCheckError: System check identified some issues" in result.stderr
        assert "example.E001" in result.stderr
    assert not OURS.search(ours.stdout + ours.stderr)  # failed before anything was bound
    # a Python caller gets the exception, as from runserver
    code = (
        "import os, django, sys;"
        "os.environ['DJANGO_SETTINGS_MODULE'] = 'example.settings'; django.setup();"
        "from django.core.management import call_command;"
        "from django.core.management.base import SystemCheckError\n"
        "try:\n"
        "    call_command('runhot', '127.0.0.1:0', skip_checks=False)\n"
        "except SystemCheckError:\n"
        "    sys.exit(42)\n"
    )
    assert run([PYTHON, "-c", code], str(site)).returncode == 42


@pytest.mark.timeout(90)
def test_a_first_generation_that_raises_exits_1_in_one_line(tmp_path):
    (tmp_path / "appcode.py").write_text("raise RuntimeError('broken from the start')\n")
    server = os.path.join(ROOT, "tests", "apps", "core_server.py")
    result = run([PYTHON, server, "127.0.0.1:0"], str(tmp_path))
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert out.count("RuntimeError: broken from the start") == 1  # the traceback, once
    assert len(OURS.findall(out)) == 2, out  # starting, then failed
