"""Warm start's decisions, without a process: what is the project's own, what is stale, how a
command line is re-run in-process, and how the template says what it left to the generations."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from grace_plugins.cmdline import Program, parse_program, program_path0, same_interpreter
from grace_plugins.preload import (
    SETTINGS,
    SOCKET,
    THREAD,
    LeftOut,
    changed_files,
    failure_reason,
    file_read,
    is_project_module,
    project_reason,
    project_roots,
    split_modules,
    summarize,
)

STDLIB = ["/usr/lib/python3.11"]
SITE = "/srv/app/.venv/lib/python3.11/site-packages"
BASE = ["/usr/lib/python3.11", "/usr/lib/python3.11/lib-dynload", SITE, "/opt/shared"]


def roots(generation_path=("/srv/app", *BASE), script_dir="/srv/app"):
    return project_roots("/srv/app", script_dir, list(generation_path), BASE)


def test_roots_are_cwd_script_dir_and_paths_the_program_added():
    found = roots(generation_path=["/srv/app", "/srv/src/webapp", *BASE], script_dir="/srv/bin")
    assert found == ["/srv/app", "/srv/bin", "/srv/src/webapp"]


def test_pythonpath_and_site_packages_are_not_roots():
    assert "/opt/shared" not in roots()
    assert SITE not in roots()


def test_project_modules_are_those_under_a_root():
    r = roots()
    assert is_project_module("views", "/srv/app/views.py", r, STDLIB)
    assert is_project_module("pkg.models", "/srv/app/pkg/models.py", r, STDLIB)
    assert not is_project_module("flask", f"{SITE}/flask/__init__.py", r, STDLIB)
    assert not is_project_module("json", "/usr/lib/python3.11/json/__init__.py", r, STDLIB)
    assert not is_project_module("shared", "/opt/shared/shared.py", r, STDLIB)
    assert not is_project_module("sys", None, r, STDLIB)


def test_a_virtualenv_inside_the_project_is_not_the_project():
    assert not is_project_module("django", f"{SITE}/django/__init__.py", ["/srv/app"], STDLIB)
    dist = "/srv/app/env/lib/python3/dist-packages/six.py"
    assert not is_project_module("six", dist, ["/srv/app"], STDLIB)


def test_a_stdlib_under_the_working_directory_is_not_the_project():
    assert not is_project_module("json", "/srv/app/py/lib/json.py", ["/srv/app"], ["/srv/app/py"])


def test_which_files_a_library_reads_at_import_matter(tmp_path):
    project, elsewhere, site = tmp_path / "app", tmp_path / "etc", tmp_path / "site-packages"
    for directory in (project, elsewhere, site):
        directory.mkdir()
        (directory / "x.cfg").write_text("x")
    roots, stdlib = [str(project)], [str(tmp_path / "stdlib")]
    assert file_read(str(project / "x.cfg"), "r", roots, stdlib) == (str(project / "x.cfg"), True)
    assert file_read(elsewhere / "x.cfg", "rb", roots, stdlib) == (str(elsewhere / "x.cfg"), False)
    for file, mode in [
        (project / "x.cfg", "w"),  # written, not read
        (project / "x.cfg", "r+"),
        (site / "x.cfg", "r"),  # installed: changes with its package
        (project / "gone.cfg", "r"),  # open() raises as it would
        (project, "r"),  # a directory
        (3, "r"),  # an fd
        ("/proc/self/status", "r"),  # the kernel's: another file in every process
    ]:
        assert file_read(file, mode, roots, stdlib) == ("", False), (file, mode)


def test_grace_plugins_is_never_the_project_even_installed_editable_inside_it():
    """The demo runs from a checkout with grace_plugins installed editable: its files are under
    the working directory, and the template (which runs grace_plugins) must still preload it."""
    for name in ("grace_plugins", "grace_plugins.options", "grace_plugins.werkzeug.serving"):
        path = f"/srv/app/{name.replace('.', '/')}.py"
        assert not is_project_module(name, path, ["/srv/app"], STDLIB)
    assert is_project_module(
        "grace_plugins_extras", "/srv/app/grace_plugins_extras.py", ["/srv/app"], STDLIB
    )


def test_main_is_always_the_project():
    assert is_project_module("__main__", f"{SITE}/flask/__main__.py", roots(), STDLIB)
    assert is_project_module("__main__", None, roots(), STDLIB)


def test_a_sibling_directory_with_a_common_prefix_is_not_under_the_root():
    assert not is_project_module("x", "/srv/application/x.py", ["/srv/app"], STDLIB)


def test_split_keeps_import_order_and_takes_submodules_of_project_packages():
    modules = [
        ("sys", None),
        ("flask", f"{SITE}/flask/__init__.py"),
        ("__main__", "/srv/app/manage.py"),
        ("shop", "/srv/app/shop/__init__.py"),
        ("shop.generated", "/tmp/gen/generated.py"),  # a project package's, wherever it is
        ("shared", "/opt/shared/shared.py"),
        ("views", "/srv/app/views.py"),
    ]
    preload, project = split_modules(modules, roots(), STDLIB)
    assert preload == ["sys", "flask", "shared"]
    assert project == ["__main__", "shop", "shop.generated", "views"]


def test_relative_paths_are_relative_to_the_working_directory():
    assert project_roots("/srv/app", None, ["", "lib"], []) == ["/srv/app", "/srv/app/lib"]


def test_the_generations_own_directory_is_a_root_when_a_symlink_names_it_for_us():
    # started in /srv/app/current (-> releases/r2), its modules' files say releases/r2
    roots = project_roots("/srv/app/current", None, [""], [], "/srv/app/releases/r2")
    assert roots == ["/srv/app/current", "/srv/app/releases/r2"]
    modules = [("views", "/srv/app/releases/r2/views.py"), ("flask", "/venv/site-packages/f.py")]
    assert split_modules(modules, roots, STDLIB) == (["flask"], ["views"])


def test_changed_files_notices_mtime_size_and_removal():
    recorded = {"/a.py": (1, 10), "/b.py": (2, 20), "/c.py": (3, 30), "/d.py": (4, 40)}
    current = {"/a.py": (1, 10), "/b.py": (5, 20), "/c.py": (3, 31), "/d.py": None}
    assert changed_files(recorded, current) == ["/b.py", "/c.py", "/d.py"]
    assert changed_files(recorded, dict(recorded)) == []


def test_parse_program_script_module_and_flags():
    script = os.path.abspath("manage.py")
    got = parse_program(["/py", "-X", "dev", script, "runhot", "8000"], 3)
    assert got == Program(["-X", "dev"], "script", script, ["runhot", "8000"])
    got = parse_program(["/py", "-u", "-m", "flask", "--app", "app", "hotrun"], 4)
    assert got == Program(["-u"], "module", "flask", ["--app", "app", "hotrun"])
    assert parse_program(["/py", "-mflask", "run"], 2) == Program([], "module", "flask", ["run"])


def test_parse_program_refuses_what_cannot_be_rerun_in_process():
    assert parse_program(["/py", "-c", "print(1)", "x"], 2) is None  # sys.argv == ['-c', 'x']
    assert parse_program(["/py", "-", "x"], 2) is None
    assert parse_program(["/py", "relative.py"], 1) is None
    assert parse_program(["/py"], 3) is None


def test_path0_is_the_script_directory_or_the_working_directory(tmp_path):
    script = tmp_path / "app.py"
    script.write_text("")
    assert program_path0(Program([], "script", str(script), []), "/x") == str(tmp_path)
    assert program_path0(Program([], "module", "flask", []), "/srv/app") == "/srv/app"


# -- what the template leaves to the generations -------------------------------------------------
def test_reading_the_settings_is_importing_the_settings_module_or_its_packages():
    settings = "mysite.settings.dev"
    for name in ("mysite", "mysite.settings", "mysite.settings.dev"):
        assert project_reason(name, settings) == SETTINGS
    assert project_reason("mysite_extra", settings) == "imports the project's mysite_extra"
    assert project_reason("home.models", settings) == "imports the project's home.models"
    assert project_reason("config", None) == "imports the project's config"


def test_summary_counts_imports_and_groups_culprits_by_reason():
    left = [
        LeftOut("pkg.sub", "pkg.sub", SETTINGS),
        LeftOut("pkg.sub.leaf", "pkg.sub", SETTINGS),
        LeftOut("agent_user", "agent", THREAD),
        LeftOut("agent", "agent", THREAD),
        LeftOut("statsd", "statsd", SOCKET),
    ]
    assert summarize(left) == (
        "left to the generations: 5 imports (reads the project's settings: pkg.sub;"
        " starts a thread: agent; opens a socket: statsd)"
    )


def test_summary_is_short_however_many_culprits():
    left = [LeftOut(f"app{i}.models", f"app{i}.models", SETTINGS) for i in range(40)]
    line = summarize(left)
    assert line == (
        "left to the generations: 40 imports (reads the project's settings:"
        " app0.models, app1.models, app2.models and 37 more)"
    )
    assert summarize(left[:1]).startswith("left to the generations: 1 import (")


def test_summary_of_nothing_left():
    assert summarize([]) == "nothing left to the generations"


def test_a_failure_is_named_by_its_exception_type_only():
    assert failure_reason(ModuleNotFoundError("no module named x")) == (
        "fails to import (ModuleNotFoundError)"
    )


def test_the_same_interpreter_however_its_path_is_spelt(monkeypatch):
    monkeypatch.setattr(sys, "executable", "/srv/site/.venv/bin/python")
    assert same_interpreter("/srv/site/app/../.venv/bin/python")  # ../.venv/bin/python app.py
    assert same_interpreter("/srv/site/./.venv/bin/python")
    assert not same_interpreter("/srv/other/.venv/bin/python")  # another environment


#: The generation's side of the test below: what it does once forked from the template.
_GENERATION = """
import os, socket, sys
from grace_plugins import forked
from grace_plugins.cmdline import Program
theirs = socket.socket(fileno=int(sys.argv[1]))
request = {"env": {}, "cwd": os.environ["CURRENT"], "fds": [], "argv": ["py"]}
inherited = forked.Inherited({}, theirs, [], Program([], "module", "app", []))
forked.become(request, [], -1, inherited)
"""


@pytest.mark.parametrize("switched", [False, True], ids=["same release", "switched"])
def test_a_fork_that_lands_in_another_release_than_the_templates_leaves(tmp_path, switched):
    # the template imported in r1; a deploy may switch current between the fork's request
    # (checked then) and the fork itself: the forked generation looks again, and leaves
    for release in ("r1", "r2"):
        (tmp_path / release).mkdir()
    (tmp_path / "current").symlink_to(tmp_path / ("r2" if switched else "r1"))
    # a fresh interpreter as the forked generation (pytest's own process may run threads)
    ours, theirs = socket.socketpair()
    with ours, theirs:
        done = subprocess.run(
            [sys.executable, "-c", _GENERATION, str(theirs.fileno())],
            cwd=tmp_path / "r1",  # where the template imported from
            env={**os.environ, "CURRENT": str(tmp_path / "current")},
            pass_fds=[theirs.fileno()],
            capture_output=True,
            text=True,
            timeout=30,
        )
    status, said = done.returncode, done.stderr
    assert status == (1 if switched else 0), said
    assert ("leads to" in said) is switched
