"""``python manage.py runhot`` as a command line: its help mirrors ``runserver``'s, bad input is
one line, ``--insecure``/``--nostatic``, an IPv6 address, ``--settings``, and
``grace-plugins reload`` reporting a runhot upgrade's outcome."""

from __future__ import annotations

import os
import re
import socket
import subprocess

import pytest

from tests.harness import PYTHON, grace_cli, http_get, wait_served_by, wait_until
from tests.harness.django_site import EXAMPLE, first_pid, runhot, set_version

django = pytest.importorskip("django")


# -- the command line ----------------------------------------------------------------------------
def test_help_lists_runserver_options_and_ours():
    def options(command):
        out = subprocess.run(
            [PYTHON, "manage.py", command, "--help"],
            cwd=EXAMPLE,
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        )
        assert out.returncode == 0, out.stderr
        return set(re.findall(r"(?<![\w-])(--?[a-zA-Z][\w-]*)", out.stdout)), out.stdout

    runserver, _ = options("runserver")
    runhot, text = options("runhot")
    assert {"--nostatic", "--insecure", "--ipv6", "--nothreading", "--noreload"} <= runserver
    assert runserver <= runhot, f"missing from runhot --help: {runserver - runhot}"
    assert {"--pidfile", "--ready-timeout", "--drain-timeout"} <= runhot
    assert "kill -HUP" in text


@pytest.mark.parametrize(
    ("option", "value", "why"),
    [
        ("--ready-timeout", "soon", "must be a number of seconds > 0, not 'soon'"),
        # a negative number is a value, though runserver's -6 looks like one to argparse
        ("--drain-timeout", "-1", "must be a number of seconds >= 0, not '-1'"),
    ],
)
def test_bad_timeout_is_a_one_line_error(option, value, why):
    out = subprocess.run(
        [PYTHON, "manage.py", "runhot", option, value],
        cwd=EXAMPLE,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert out.returncode != 0
    assert f"argument {option}: {why}" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("flags", "status"), [((), 404), (("--insecure",), 200)])
def test_static_files_without_debug_need_insecure(start_server, django_project, flags, status):
    server = runhot(start_server, django_project, "--noreload", *flags, env={"EXAMPLE_DEBUG": "0"})
    assert http_get(server.port, "/hello").version == "v1"
    assert http_get(server.port, "/static/example/style.css").status == status
    assert server.stop() == 0


def _has_ipv6_loopback():
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.timeout(60)
@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback")
def test_ipv6_addrport(start_server, django_project):
    server = runhot(start_server, django_project, "--noreload", address="[::1]:0")
    assert "serving tcp:[::1]:" in server.output()
    server.wait_for(r"Starting (WSGI )?development server at http://\[::1\]:", 10)
    old = first_pid(server)
    assert http_get(server.port, host="::1").pid == old
    new = server.upgrade(60)
    wait_served_by_host(server.port, new, "::1")
    assert server.stop() == 0


@pytest.mark.timeout(90)
@pytest.mark.parametrize("reload", [True, False])
def test_run_main_marks_the_serving_process_as_runserver_s_child(
    start_server, django_project, tmp_path, reload
):
    """With the reloader on, ``RUN_MAIN=true`` in the processes that serve (runserver's child
    gets it; apps start things once behind ``if os.environ.get("RUN_MAIN") == "true"``),
    never in the supervisor (its checks import the views too). ``--noreload``: nowhere, as
    ``runserver --noreload``."""
    log = tmp_path / "marks.log"
    mark = (
        "import os as _os\n"
        f"with open({str(log)!r}, 'a') as _marks:\n"
        "    print(_os.getpid(), _os.environ.get('RUN_MAIN'), file=_marks)\n"
    )
    set_version(django_project, "v1", mark)
    server = runhot(start_server, django_project, *([] if reload else ["--noreload"]))
    first, second = first_pid(server), server.upgrade(60)
    wait_served_by(server.port, second)
    marks = dict(line.split() for line in log.read_text().splitlines())
    served = "true" if reload else "None"
    assert {marks.get(str(first)), marks.get(str(second))} == {served}, marks
    assert marks.get(str(server.pid), "None") == "None", marks  # the supervisor's checks
    assert server.stop() == 0


def wait_served_by_host(port, pid, host):
    return wait_until(
        lambda: http_get(port, host=host).pid == pid, 20, f"a response from pid {pid}"
    )


@pytest.mark.timeout(60)
def test_settings_option_and_unapplied_migrations_warning(start_server, django_project, tmp_path):
    """--settings reaches every generation; Django's migration warning is printed."""
    (django_project / "example" / "settings_db.py").write_text(
        "from example.settings import *  # noqa: F403\n"
        "INSTALLED_APPS = ['django.contrib.contenttypes', *INSTALLED_APPS]  # noqa: F405\n"
        f"DATABASES = {{'default': {{'ENGINE': 'django.db.backends.sqlite3',"
        f" 'NAME': {str(tmp_path / 'db.sqlite3')!r}}}}}\n"
    )
    server = runhot(start_server, django_project, "--noreload", "--settings", "example.settings_db")
    assert "using settings 'example.settings_db'" in server.output()
    server.wait_for(r"You have \d+ unapplied migration", 20)  # printed once serving
    mark = server.mark()
    new = server.upgrade(60)
    wait_served_by(server.port, new)
    server.wait_for(r"You have \d+ unapplied migration", 20, after=mark)  # by each generation
    assert server.output().count("using settings 'example.settings_db'") == 2
    assert server.stop() == 0


@pytest.mark.timeout(60)
def test_a_failing_migrations_check_is_reported_and_the_site_serves(
    start_server, django_project, tmp_path
):
    """``runserver``'s unapplied-migrations check only ever warns: it runs once the generation
    serves, and its failure (here a migration that does not import) is one line, neither a
    failed start nor a rolled-back upgrade."""
    migrations = django_project / "shop" / "migrations"
    migrations.mkdir(parents=True)
    (django_project / "shop" / "__init__.py").write_text("")
    (migrations / "__init__.py").write_text("")
    (migrations / "0001_initial.py").write_text("this is not python (\n")
    (django_project / "example" / "settings_shop.py").write_text(
        "from example.settings import *  # noqa: F403\n"
        "INSTALLED_APPS = [*INSTALLED_APPS, 'shop']  # noqa: F405\n"
        f"DATABASES = {{'default': {{'ENGINE': 'django.db.backends.sqlite3',"
        f" 'NAME': {str(tmp_path / 'db.sqlite3')!r}}}}}\n"
    )
    settings = ("--settings", "example.settings_shop")
    server = runhot(start_server, django_project, "--noreload", *settings)
    failed = r"The unapplied-migrations check failed: SyntaxError"
    server.wait_for(failed, 20)
    assert http_get(server.port).status == 200
    mark = server.mark()
    set_version(django_project, "v2")
    new = server.upgrade(60)
    assert wait_served_by(server.port, new).version == "v2"
    server.wait_for(failed, 20, after=mark)
    assert "rolled back" not in server.output()
    assert server.stop() == 0


@pytest.mark.timeout(120)
def test_grace_plugins_reload_through_runhot(start_server, django_project):
    """``grace-plugins reload --pidfile`` waits for the outcome of a runhot upgrade."""

    pidfile = str(django_project / "runhot.pid")
    server = runhot(start_server, django_project, "--noreload", f"--pidfile={pidfile}")
    set_version(django_project, "v2")
    good = grace_cli("reload", "--pidfile", pidfile)
    assert good.returncode == 0, good.stderr
    assert good.stdout.startswith("upgraded: generation 2 (pid ")
    wait_until(lambda: "version:v2" in http_get(server.port).body, 10, "v2 served")
    set_version(django_project, "v3", extra="raise RuntimeError('broken on purpose')")
    bad = grace_cli("reload", "--pidfile", pidfile)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert bad.stderr.startswith("rolled back: generation 3 ")
    assert "version:v2" in http_get(server.port).body
    assert server.stop() == 0
