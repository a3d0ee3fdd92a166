"""``flask hotrun`` as a command line: its help mirrors ``flask run``'s, bad input is one line,
every ``--app`` form ``flask run`` accepts works, malformed inherited inputs are refused, and
``grace-plugins reload`` reports a hotrun upgrade's outcome."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from tests.harness import PYTHON, ROOT, grace_cli, http_get, wait_served_by, wait_until
from tests.harness.flask_site import FLASK, NOT_THE_REPO, hotrun, seed_app, set_version
from tests.harness.inherit import MALFORMED_INPUTS, run_with_inherited

pytestmark = pytest.mark.skipif(not os.path.exists(FLASK), reason="flask is not installed")


# -- the command line ---------------------------------------------------------------------------
def _options(help_text: str) -> dict[str, str]:
    """{first option name: its help entry} from a click --help page."""
    section = help_text.split("Options:", 1)[1]
    entries: dict[str, str] = {}
    current = None
    for line in section.splitlines():
        found = re.match(r"  (-\w, )?(--[\w-]+)", line)
        if found:
            current = found.group(2)
            entries[current] = " ".join(line.split())
        elif current and line.strip():
            entries[current] += " " + " ".join(line.split())
    return entries


def test_hotrun_help_has_every_run_option(tmp_path):
    def help_of(command: str) -> str:
        return subprocess.run(
            [FLASK, command, "--help"],
            cwd=str(tmp_path),
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout

    run, hot = _options(help_of("run")), _options(help_of("hotrun"))
    assert set(run) <= set(hot), f"missing in hotrun: {set(run) - set(hot)}"
    for name, entry in run.items():
        assert hot[name] == entry, f"{name} differs from flask run's"
    assert {"--pidfile", "--ready-timeout", "--drain-timeout"} <= set(hot)
    assert "kill -HUP" in help_of("--help")  # the short help in `flask --help`


def test_import_grace_plugins_imports_no_framework():
    code = (
        "import sys, grace_plugins; bad = {'flask', 'werkzeug', 'click'} & set(sys.modules);"
        " assert not bad, bad"
    )
    subprocess.run([PYTHON, "-c", code], check=True, timeout=30, cwd=ROOT)


def test_bad_input_is_one_line(tmp_path):
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [FLASK, *args],
            cwd=str(tmp_path),
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "PYTHONPATH": ROOT},
        )

    missing = run("--app", "no_such_module", "hotrun", "-p", "0")
    assert missing.returncode == run("--app", "no_such_module", "run", "-p", "0").returncode == 2
    assert "Error: Could not import 'no_such_module'." in missing.stderr
    assert "Traceback" not in missing.stderr
    key_alone = run("hotrun", "--key", __file__)
    assert key_alone.returncode == 2 and '"--cert" must also be specified' in key_alone.stderr
    cert_alone = run("hotrun", "--cert", __file__)
    assert cert_alone.returncode == 2 and "Required when using" in cert_alone.stderr


# -- every --app form flask run accepts ----------------------------------------------------------
FACTORY = """
import os
from flask import Flask

def create_app(version="v1"):
    app = Flask(__name__)

    @app.get("/hello")
    def hello():
        return f"WORLD! ospid:{os.getpid()} version:{version}"

    return app
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("app", "version"),
    [
        ("app", "v1"),
        ("app:app", "v1"),
        ("site/app.py", "v1"),
        ("factory", "v1"),
        ("factory:create_app('f2')", "f2"),
    ],
)
def test_app_forms(start_server, tmp_path, app, version):
    seed_app(tmp_path)
    seed_app(tmp_path / "site")
    (tmp_path / "factory.py").write_text(FACTORY)
    server, port = hotrun(start_server, tmp_path, app=app)
    assert http_get(port).version == version
    pid = server.upgrade(30)
    assert wait_served_by(port, pid).version == version
    assert server.stop() == 0


# -- what reaches the program ---------------------------------------------------------------------
@pytest.mark.timeout(90)
@pytest.mark.parametrize("case", list(MALFORMED_INPUTS))
def test_malformed_inherited_input_through_hotrun(tmp_path, case):
    """Each malformed inherited input, through ``flask hotrun`` as a user starts it: one line,
    exit status 2, no traceback."""
    seed_app(tmp_path)
    env, kind, message = MALFORMED_INPUTS[case]
    argv = [FLASK, "--app", "app.py", "hotrun", "-p", "0"]
    status, stderr = run_with_inherited(argv, env, kind, tmp_path)
    lines = stderr.strip().splitlines()
    assert status == 2, stderr
    assert len(lines) == 1 and re.search(message, lines[0]), stderr
    assert "Traceback" not in stderr


@pytest.mark.timeout(90)
def test_grace_plugins_reload_through_hotrun(start_server, tmp_path):
    """``grace-plugins reload --pidfile`` waits for the outcome of a hotrun upgrade."""

    app = seed_app(tmp_path)
    pidfile = str(tmp_path / "hotrun.pid")
    server, port = hotrun(start_server, tmp_path, f"--pidfile={pidfile}")
    set_version(app, "v2")
    good = grace_cli("reload", "--pidfile", pidfile)
    assert good.returncode == 0, good.stderr
    assert good.stdout.startswith("upgraded: generation 2 (pid ")
    wait_until(lambda: "version:v2" in http_get(port).body, 10, "v2 served")
    set_version(app, "v3", extra="raise RuntimeError('broken on purpose')\n")
    bad = grace_cli("reload", "--pidfile", pidfile)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert bad.stderr.startswith("rolled back: generation 3 ")
    assert "version:v2" in http_get(port).body
    assert server.stop() == 0


#: Appended to the app: each process that imports it logs its pid and the reloader's mark.
MARKED = (
    "import os as _os\n"
    "with open({log!r}, 'a') as _marks:\n"
    "    print(_os.getpid(), _os.environ.get('WERKZEUG_RUN_MAIN'), file=_marks)\n"
)


@pytest.mark.timeout(60)
def test_the_reloader_marks_only_the_serving_process_and_flask_s_banner_shows(
    start_server, tmp_path
):
    """As ``flask run --reload``: the first process prints Flask's banner lines, and only the
    processes that serve run "from the reloader" (``WERKZEUG_RUN_MAIN=true``), after a HUP
    too."""
    app = seed_app(tmp_path)
    log = tmp_path / "marks.log"
    set_version(app, "v1", extra=MARKED.format(log=str(log)))
    server, port = hotrun(start_server, tmp_path, "--reload", NOT_THE_REPO)
    server.wait_for(r"^ \* Serving Flask app 'app.py'$", 10)  # the banner, after the ready line
    server.wait_for(r"^ \* Debug mode: off$", 10)
    first = http_get(port).pid
    second = server.upgrade(30)
    wait_served_by(port, second)
    marks = dict(line.split() for line in log.read_text().splitlines())
    assert marks == {str(first): "true", str(second): "true"}, marks
    assert server.stop() == 0
