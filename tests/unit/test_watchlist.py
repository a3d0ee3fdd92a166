"""What a generation reports it loaded, in this process: what werkzeug's reloader and Django's
``runserver`` would watch, and what a generation whose app failed to import tried."""

from __future__ import annotations

import importlib
import os
import sys
import zipfile

import pytest

from grace_plugins import loaded
from grace_plugins.watchspec import DirGlob, Matcher

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def modules(tmp_path, monkeypatch):
    """import_(name, text) -> the module, imported from a temporary directory on sys.path;
    every module imported through it is forgotten after the test."""
    monkeypatch.syspath_prepend(str(tmp_path))
    imported: list[str] = []

    def import_(name: str, text: str):
        (tmp_path / f"{name}.py").write_text(text)
        importlib.invalidate_caches()
        imported.append(name)
        return importlib.import_module(name)

    yield import_
    for name in imported:
        sys.modules.pop(name, None)


# -- the core: module files, the files a failure went through, the project's directories ---------
def test_module_files_are_the_loaded_files_and_zip_archives(tmp_path, monkeypatch):
    archive = tmp_path / "bundle.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("zipped_mod_for_test.py", "X = 1\n")
    monkeypatch.syspath_prepend(str(archive))
    module = importlib.import_module("zipped_mod_for_test")
    try:
        files = loaded.module_files()
    finally:
        sys.modules.pop("zipped_mod_for_test", None)
    assert str(archive) in files
    assert os.path.abspath(loaded.__file__) in files
    assert module.__file__ not in files  # a path inside the archive is no file


def test_traceback_files_name_every_frame_the_syntax_error_and_the_cause(modules, tmp_path):
    helper = modules("tb_helper_for_test", "def fail():\n    raise KeyError('x')\n")
    (tmp_path / "tb_broken_for_test.py").write_text("def broken(:\n")
    try:
        try:
            helper.fail()
        except KeyError as exc:
            raise RuntimeError("wrapped") from exc
    except RuntimeError as exc:
        chained = exc
    try:
        importlib.import_module("tb_broken_for_test")
    except SyntaxError as exc:
        syntax = exc
    assert {helper.__file__, os.path.abspath(__file__)} <= loaded.traceback_files(chained)
    assert str(tmp_path / "tb_broken_for_test.py") in loaded.traceback_files(syntax)
    assert loaded.traceback_files(None) == set()


def test_project_dirs_leave_out_the_installed_environment_and_grace_plugins(tmp_path):
    files = [
        os.__file__,  # the standard library
        pytest.__file__,  # site-packages
        loaded.__file__,  # grace_plugins itself (installed editable, here)
        str(tmp_path / "app.py"),
    ]
    assert loaded.project_dirs(files) == {str(tmp_path)}


def test_what_a_failed_import_tried_includes_the_broken_module(modules, tmp_path):
    """The trap: the module whose import failed is not in sys.modules, and it is the file the
    developer fixes next; a module they create beside it counts too."""
    since = 1000.0
    (tmp_path / "failing_mod_for_test.py").write_text("import missing_helper_for_test\n")
    try:
        importlib.import_module("failing_mod_for_test")
    except ImportError as exc:
        failure = exc
    (tmp_path / "plugins").mkdir()
    spec = loaded.tried_spec(
        failure,
        since,
        extra_files=[str(tmp_path / "settings.toml"), str(tmp_path / "plugins")],
        exclude=["*/excluded_*"],
    )
    matcher = Matcher(spec)
    assert spec.since == since
    assert str(tmp_path / "failing_mod_for_test.py") in spec.files
    assert str(tmp_path / "settings.toml") in spec.files
    assert os.path.abspath(os.__file__) in spec.files  # what it had loaded
    assert DirGlob(str(tmp_path / "plugins"), loaded.PYTHON_FILES) in spec.dirs  # an extra dir
    for name, counts in [
        ("missing_helper_for_test.py", True),  # created to fix the import
        ("excluded_mod.py", False),
        ("notes.txt", False),
    ]:
        assert (matcher.match(str(tmp_path / name)) is not None) is counts, name


# -- werkzeug: what its reloader watches ---------------------------------------------------------
def test_werkzeug_watches_the_modules_files_and_the_extra_files(modules, tmp_path):
    pytest.importorskip("werkzeug")
    from werkzeug import _reloader

    from grace_plugins.werkzeug.watchlist import serving_spec

    app = modules("wz_app_for_test", "VERSION = 1\n")
    extra = tmp_path / "config.toml"
    extra.write_text("x = 1\n")
    (tmp_path / "plugins").mkdir()
    spec = serving_spec(
        [str(extra), str(tmp_path / "plugins")], ["*/excluded_dir/*", "*/flask/*"], 123.0
    )
    werkzeugs = {p for p in _reloader._iter_module_paths() if "/flask/" not in p}
    assert werkzeugs <= spec.files  # exactly what werkzeug's reloader would watch...
    assert not any("/flask/" in p for p in spec.files)  # ...less what is excluded
    assert {app.__file__, str(extra)} <= spec.files
    assert DirGlob(str(tmp_path / "plugins"), "**/*.py") in spec.dirs
    assert spec.exclude == ("*/excluded_dir/*", "*/flask/*") and spec.since == 123.0
    assert Matcher(spec).match(str(tmp_path / "plugins" / "sub" / "p.py")) is not None


# -- gunicorn: what --reload watches ------------------------------------------------------------
def test_gunicorn_watches_the_modules_sources_and_the_extra_files_and_patterns(modules, tmp_path):
    from grace_plugins.gunicorn.watchlist import serving_spec

    app = modules("gu_app_for_test", "VERSION = 1\n")
    sys.modules["gu_compiled_for_test"] = type(sys)("gu_compiled_for_test")
    sys.modules["gu_compiled_for_test"].__file__ = str(tmp_path / "compiled.pyc")
    try:
        spec = serving_spec(["conf.toml", str(tmp_path / "templates/**/*.html")], 9.0)
    finally:
        del sys.modules["gu_compiled_for_test"]
    assert {app.__file__, str(tmp_path / "compiled.py"), os.path.abspath("conf.toml")} <= (
        spec.files
    )
    assert os.path.abspath(os.__file__) in spec.files  # gunicorn watches every module
    assert spec.dirs == {DirGlob(str(tmp_path / "templates"), "**/*.html")}
    assert Matcher(spec).match(str(tmp_path / "templates" / "new" / "page.html")) is not None
    assert spec.since == 9.0


# -- Django: what runserver watches --------------------------------------------------------------
@pytest.fixture
def django_ready(settings, tmp_path):
    """Django set up in this process (tests/django_settings.py, as the in-process e2e tests
    do), with a template directory, a locale path and translations on."""
    import django.test.signals  # noqa: F401 (its receivers reset the template engines)

    (tmp_path / "templates").mkdir()
    settings.TEMPLATES = [
        {
            "BACKEND": "django.template.backends.django.DjangoTemplates",
            "DIRS": [str(tmp_path / "templates")],
        }
    ]
    settings.LOCALE_PATHS = [str(tmp_path / "locale")]
    settings.USE_I18N = True
    from django.utils.translation import gettext

    gettext("hello")  # translations connect their autoreload_started receiver at first use
    return settings


@pytest.fixture(scope="module")
def django_configured():
    pytest.importorskip("pytest_django")
    import django
    from django.conf import settings

    if not settings.configured:
        from tests import django_settings

        settings.configure(**{k: v for k, v in vars(django_settings).items() if k.isupper()})
        django.setup()
    return settings


def test_django_watches_modules_templates_locale_and_receivers_globs(
    django_configured, django_ready, tmp_path, caplog
):
    from django.utils import autoreload

    from grace_plugins.django.watchlist import Recorder, Watchlist

    calls: list[object] = []

    def own_receiver(sender, **kwargs):
        calls.append(sender)
        sender.watch_dir(tmp_path / "assets", "*.css")
        sender.extra_files.add(tmp_path / "feature_flags.json")

    def broken_receiver(sender, **kwargs):
        raise RuntimeError("broken on purpose")

    autoreload.autoreload_started.connect(own_receiver, weak=False)
    autoreload.autoreload_started.connect(broken_receiver, weak=False)
    try:
        watchlist = Watchlist()
        spec = watchlist.spec(55.0)
        again = watchlist.spec(56.0)
    finally:
        autoreload.autoreload_started.disconnect(own_receiver)
        autoreload.autoreload_started.disconnect(broken_receiver)
    assert len(calls) == 1 and isinstance(calls[0], Recorder)  # receivers run once
    assert again.dirs == spec.dirs and again.since == 56.0
    assert os.path.realpath(autoreload.__file__) in spec.files  # every module's file
    assert str(tmp_path / "feature_flags.json") in spec.files
    assert {
        DirGlob(str(tmp_path / "templates"), "**/*"),
        DirGlob(str(tmp_path / "locale"), "**/*.mo"),
        DirGlob(str(tmp_path / "assets"), "*.css"),
    } <= spec.dirs
    assert "broken_receiver failed (RuntimeError: broken on purpose)" in caplog.text
    matcher = Matcher(spec)
    assert matcher.match(str(tmp_path / "templates" / "shop" / "item.html")) is not None
    assert matcher.match(str(tmp_path / "locale" / "fr" / "LC_MESSAGES" / "django.mo"))
    assert matcher.match(str(tmp_path / "assets" / "dark" / "site.css")) is None


def test_django_lists_what_runserver_lists(django_configured, django_ready):
    """The same files as Django's own reloader, module by module, and its globs; plus the
    Python files beside the project's modules (where a module whose import failed is)."""
    from django.utils import autoreload

    from grace_plugins.django.watchlist import Watchlist
    from grace_plugins.loaded import project_dirs

    spec = Watchlist().spec(None)
    reloader = autoreload.StatReloader()
    autoreload.autoreload_started.send(sender=reloader)
    theirs = {str(p) for p in reloader.watched_files(include_globs=False)}
    assert theirs == set(spec.files)
    globs = {(str(p), g) for p, gs in reloader.directory_globs.items() for g in gs}
    beside = {(d, "*.py") for d in project_dirs(spec.files)}
    assert beside and globs | beside == {(d.path, d.glob) for d in spec.dirs}
