"""The template's preload, in this process (no process started): each top-level import atomic,
what must be left out refused or undone, and nothing printed.

Each test writes small libraries under ``lib/`` and a project under ``project/`` (the project's
``projectsettings`` stands for the settings a Django library reads at import), imports them
through a :class:`Preloader`, and afterwards imports as a forked generation would, guards off.
"""

from __future__ import annotations

import importlib
import os
import sys
import textwrap
import threading

import pytest

from grace_plugins.preload import (
    PROJECT_FILE,
    SETTINGS,
    SOCKET,
    THREAD,
    LeftOut,
    stamp,
    stdlib_dirs,
)
from grace_plugins.preloader import DEBUG_VAR, Preloader


@pytest.fixture
def tree(tmp_path, monkeypatch):
    """write(path, text) under tmp_path; ``lib`` and ``project`` on sys.path; sys.modules and
    the import caches restored afterwards."""
    for part in ("lib", "project"):
        (tmp_path / part).mkdir()
        monkeypatch.syspath_prepend(str(tmp_path / part))
    monkeypatch.delenv(DEBUG_VAR, raising=False)
    before = dict(sys.modules)

    def write(path: str, text: str) -> None:
        target = tmp_path / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(textwrap.dedent(text))
        importlib.invalidate_caches()

    write("project/projectsettings.py", "MODE = 'live'\n")
    yield write
    for name in [n for n in sys.modules if n not in before]:
        del sys.modules[name]


@pytest.fixture
def preloader(tmp_path):
    return Preloader([str(tmp_path / "project")], stdlib_dirs(), {}, "projectsettings")


def preload(preloader: Preloader, *names: str) -> list[bool]:
    with preloader:
        return [preloader.load(name) for name in names]


def test_a_refused_subpackage_leaves_no_half_imported_package(tree, preloader):
    """The issue's case: ``pkg.sub`` imports ``pkg.sub.leaf``, then reads the settings."""
    tree("lib/pkg/__init__.py", "")
    tree("lib/pkg/sub/__init__.py", "from . import leaf\nimport projectsettings\n")
    tree("lib/pkg/sub/leaf.py", "VALUE = 'leaf'\n")
    assert preload(preloader, "pkg", "pkg.sub", "pkg.sub.leaf") == [True, False, False]
    assert "pkg" in sys.modules
    assert "pkg.sub" not in sys.modules and "pkg.sub.leaf" not in sys.modules
    assert preloader.left == [
        LeftOut("pkg.sub", "pkg.sub", SETTINGS),
        LeftOut("pkg.sub.leaf", "pkg.sub", SETTINGS),
    ]
    import pkg.sub.leaf as leaf  # as a generation does, the project importable

    assert leaf.VALUE == "leaf" and sys.modules["pkg"].sub.leaf is leaf


def test_a_module_that_imported_cleanly_stays_with_what_cached_it(tree, preloader):
    """Removing it would give a lazy package's cached class a re-imported twin (seen on a CMS:
    pydantic's cached BaseModel against a re-imported metaclass, a metaclass conflict)."""
    tree(
        "lib/lazypkg/__init__.py",
        """\
        import importlib
        def __getattr__(name):
            if name != "Base":
                raise AttributeError(name)
            globals()[name] = value = importlib.import_module("lazypkg.core").Base
            return value
        """,
    )
    tree("lib/lazypkg/core.py", "class Base: pass\n")
    tree("lib/reader.py", "from lazypkg import Base\nimport projectsettings\n")
    assert preload(preloader, "lazypkg", "reader") == [True, False]
    assert sys.modules["lazypkg"].Base is sys.modules["lazypkg.core"].Base


def test_a_module_holding_what_a_failed_module_defined_goes_too(tree, preloader):
    """A circular import: ``cycle_b`` took ``cycle_a.f`` from the half-run ``cycle_a``."""
    tree("lib/cycle_a.py", "def f(): pass\nimport cycle_b\nimport projectsettings\n")
    tree("lib/cycle_b.py", "from cycle_a import f\n")
    tree("lib/bystander.py", "import json\n")
    tree("lib/cycle_c.py", "import bystander\nimport cycle_a\n")
    assert preload(preloader, "cycle_c") == [False]
    assert "cycle_b" not in sys.modules and "cycle_a" not in sys.modules
    assert "bystander" in sys.modules


def test_a_thread_is_refused_before_it_runs_and_what_imports_it_is_left_out(tree, preloader):
    tree(
        "lib/agent.py",
        "import threading, time\nthreading.Thread(target=time.sleep, args=(60,)).start()\n",
    )
    tree("lib/agent_user.py", "import agent\n")
    tree("lib/plain.py", "VALUE = 1\n")
    running = threading.active_count()
    assert preload(preloader, "agent_user", "agent", "plain") == [False, False, True]
    assert threading.active_count() == running
    assert preloader.left == [
        LeftOut("agent_user", "agent", THREAD),
        LeftOut("agent", "agent", THREAD),
    ]
    assert not preloader.tainted and preloader.kept == 1


def test_a_refusal_the_library_swallows_still_leaves_it_out(tree, preloader):
    tree(
        "lib/careless.py",
        """\
        try:
            import projectsettings
        except BaseException:
            projectsettings = None
        """,
    )
    assert preload(preloader, "careless") == [False]
    assert "careless" not in sys.modules
    assert preloader.left == [LeftOut("careless", "careless", SETTINGS)]


def test_a_library_reading_a_project_file_at_import_is_left_out(tree, preloader, tmp_path):
    """Its config beside the app: each generation must read it as it is then."""
    config = tmp_path / "project" / "lib.cfg"
    config.write_text("conf-1\n")
    tree("lib/cfglib.py", f"import pathlib\nMODE = pathlib.Path({str(config)!r}).read_text()\n")
    tree("lib/cfglib_user.py", "import cfglib\n")
    assert preload(preloader, "cfglib_user") == [False]
    assert preloader.left[0] == LeftOut("cfglib_user", "cfglib", PROJECT_FILE)
    assert "cfglib" not in sys.modules and not preloader.read_files
    with preloader:  # outside an import (the template formatting a traceback): not refused
        open(config).close()
    # a module that kept the guarded open() (as tarfile keeps ``bltn_open``) reads freely after
    tree("lib/keeps_open.py", "_open = open\n")
    assert preload(preloader, "keeps_open") == [True]
    with sys.modules["keeps_open"]._open(config) as kept:
        assert kept.read() == "conf-1\n"


def test_a_file_outside_the_project_read_at_import_is_stamped(tree, preloader, tmp_path):
    """Kept, and its file stamped: the template is stale once it changes. What an import that
    was left out read is not."""
    outside = tmp_path / "etc" / "featlib.conf"
    outside.parent.mkdir()
    outside.write_text("custom\n")
    tree("lib/featlib.py", f"with open({str(outside)!r}) as f:\n    MODE = f.read()\n")
    other = tmp_path / "etc" / "broken.conf"
    other.write_text("x\n")
    tree("lib/featlib_broken.py", f"open({str(other)!r}).close()\nraise RuntimeError('broken')\n")
    assert preload(preloader, "featlib_broken", "featlib") == [False, True]
    assert preloader.read_files == {str(outside): (stamp(str(outside)), "featlib")}


def open_fds() -> dict[int, str]:
    found = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            found[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # the listing's own fd, closed by now
            continue
    return found


def test_a_socket_kept_open_is_left_out_and_closed(tree, preloader):
    tree(
        "lib/metrics.py",
        "import socket\nSOCK = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n",
    )
    tree("lib/metrics_user.py", "import metrics\n")
    before = open_fds()
    assert preload(preloader, "metrics_user") == [False]
    assert preloader.left == [LeftOut("metrics_user", "metrics", SOCKET)]
    assert "metrics" not in sys.modules and "metrics_user" not in sys.modules
    # the socket is closed with the module (the collection may close more: garbage the test
    # process had, such as a coverage tracer's file)
    assert open_fds().items() <= before.items() and not preloader.tainted


def test_project_code_loaded_behind_the_import_system_is_left_out(tree, preloader, tmp_path):
    path = tmp_path / "project" / "projecthelpers.py"
    tree(
        "lib/bypass.py",
        f"""\
        import importlib.util, sys
        spec = importlib.util.spec_from_file_location("projecthelpers", {str(path)!r})
        module = importlib.util.module_from_spec(spec)
        sys.modules["projecthelpers"] = module
        spec.loader.exec_module(module)
        """,
    )
    tree("project/projecthelpers.py", "X = 1\n")
    assert preload(preloader, "bypass") == [False]
    assert preloader.left == [LeftOut("bypass", "bypass", "imports the project's projecthelpers")]
    assert "projecthelpers" not in sys.modules


def test_nothing_is_printed_and_debug_shows_it_all(tree, preloader, capfd, monkeypatch):
    monkeypatch.setattr(sys, "stdout", sys.__stdout__)  # as in the template: fds 1 and 2
    monkeypatch.setattr(sys, "stderr", sys.__stderr__)
    tree(
        "lib/noisy.py",
        """\
        import os, sys
        print("hello from noisy")
        os.write(2, b"raw stderr from noisy\\n")
        class Dying:
            def __del__(self):
                raise ValueError("ignored in __del__")
        Dying()
        """,
    )
    tree("lib/broken.py", "raise RuntimeError('broken library')\n")
    assert preload(preloader, "noisy", "broken") == [True, False]
    assert capfd.readouterr() == ("", "")
    notes = "\n".join(preloader.notes)
    assert "hello from noisy" in notes and "raw stderr from noisy" in notes
    assert "ignored in __del__" in notes and "RuntimeError: broken library" in notes
    assert preloader.left == [LeftOut("broken", "broken", "fails to import (RuntimeError)")]

    monkeypatch.setenv(DEBUG_VAR, "1")
    tree("lib/noisy2.py", "print('hello again')\n")
    preload(Preloader([], stdlib_dirs(), {}, None), "noisy2")
    assert "debug: what the libraries printed while imported:" in capfd.readouterr().err


def test_an_excluded_module_is_refused_before_it_runs(tree, tmp_path):
    tree("lib/native.py", "raise AssertionError('must not run')\n")
    tree("lib/native_user.py", "import native\n")
    preloader = Preloader([], stdlib_dirs(), {"native": THREAD}, None)
    assert preload(preloader, "native_user") == [False]
    assert preloader.left == [LeftOut("native_user", "native", THREAD)]


def test_a_module_no_import_can_find_is_skipped_not_reported(tree, preloader):
    """Cython extensions put ``cython_runtime`` and the like in ``sys.modules``: a generation
    reports them, no import finds them."""
    assert preload(preloader, "cython_runtime_not_a_module") == [False]
    assert preloader.left == [] and preloader.kept == 0


def test_a_lazy_module_is_kept_and_its_getattr_never_runs(tree, preloader):
    """Looking at what an import added must not call a module's ``__getattr__`` (PEP 562): it
    may import the project (here: ``__file__``, ``__path__`` looked up the plain way)."""
    tree(
        "lib/lazyproj.py",
        """\
        def __getattr__(name):
            import projectsettings
            return projectsettings.MODE
        """,
    )
    tree("lib/lazyproj_user.py", "import lazyproj\n")
    assert preload(preloader, "lazyproj_user") == [True]
    assert "projectsettings" not in sys.modules and preloader.left == []


def test_a_circular_import_entered_from_its_other_end_is_tried_again(tree, preloader):
    """Django's sqlite3 backend: ``base`` imports ``features``, which imports ``base``. Listed
    ``features`` first, it fails alone (``base`` needs it whole); after the rest, it works."""
    tree("lib/backend/__init__.py", "")
    tree(
        "lib/backend/base.py",
        "Database = 'sqlite'\nfrom .features import Features\n"
        "class Wrapper:\n    features = Features\n",
    )
    tree(
        "lib/backend/features.py",
        "from .base import Database\nclass Features:\n    db = Database\n",
    )
    with preloader:
        assert [preloader.load(n) for n in ("backend.features", "backend.base")] == [False, True]
        preloader.retry_circular()
    assert preloader.left == []
    assert sys.modules["backend.base"].Wrapper.features.db == "sqlite"
    assert preloader.circular == []


def test_an_import_that_fails_otherwise_is_not_tried_again(tree, preloader):
    tree("lib/broken.py", "raise ImportError('no native library')\n")
    with preloader:
        assert preloader.load("broken") is False
        preloader.retry_circular()
    assert [one.name for one in preloader.left] == ["broken"]
