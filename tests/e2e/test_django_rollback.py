"""Broken new code through ``python manage.py runhot`` is rolled back: a broken view, broken
settings, a failing system check, a hang (saved), and every way new code can fail at import
(the harness's one table, on HUP) under load; the fix upgrades."""

from __future__ import annotations

import os
import signal

import pytest

from tests.harness import Load, broken_at_import, http_get, wait_served_by, wait_until
from tests.harness.django_site import (
    ROLLED_BACK,
    first_pid,
    next_ready,
    runhot,
    save,
    set_version,
)

django = pytest.importorskip("django")


# -- broken code is rolled back ------------------------------------------------------------------
def _views_syntax_error(django_project):
    set_version(django_project, "broken", extra="def oops(:\n    pass")


def _settings_error(django_project):
    settings = django_project / "example" / "settings.py"
    save(
        settings,
        settings.read_text()
        + "\nfrom django.core.exceptions import ImproperlyConfigured\n"
        + "raise ImproperlyConfigured('example: settings broken on purpose')\n",
    )


def _failing_check(django_project):
    set_version(django_project, "")


def _hang_at_import(django_project):
    set_version(django_project, "hang", extra="time.sleep(600)")


BREAKAGES = {
    "view-syntax-error": (_views_syntax_error, r"SyntaxError"),
    "settings-error": (_settings_error, r"ImproperlyConfigured: example: settings broken"),
    "failing-check": (_failing_check, r"example\.E001"),
    "hang-at-import": (_hang_at_import, r"was not ready within 10 s"),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", list(BREAKAGES))
def test_broken_save_is_rolled_back_and_fixing_upgrades(start_server, django_project, kind):
    break_it, error = BREAKAGES[kind]
    settings_text = (django_project / "example" / "settings.py").read_text()
    # A short ready timeout for the hang (each broken start costs it); a real one otherwise.
    ready_timeout = "10" if kind == "hang-at-import" else "30"
    server = runhot(start_server, django_project, "--ready-timeout", ready_timeout)
    port, old = server.port, first_pid(server)
    with Load(port, fresh=1, keepalive=1, slow=0, max_seconds=80) as load:
        mark = server.mark()
        break_it(django_project)
        server.wait_for(ROLLED_BACK, 30, after=mark)
        server.wait_for(error, 5, after=mark)
        still = http_get(port)
        assert (still.pid, still.version) == (old, "v1")
        # The fix: the old generation is still watching, and upgrades.
        mark = server.mark()
        settings = django_project / "example" / "settings.py"
        if settings.read_text() != settings_text:
            save(settings, settings_text)
        set_version(django_project, "fixed")
        new = next_ready(server, mark)
        assert wait_served_by(port, new).version == "fixed"
        wait_until(lambda: "fixed" in load.report.versions, 20, "the load to reach the fix")
    report = load.stop()
    assert not report.failures, report.summary()
    assert "v1" in report.versions
    assert server.stop() == 0


# -- every way new code can fail at import, on HUP ------------------------------------------------
#: Every way new code can fail at import (tests/harness/code.py), with its rollback line.
HANG_READY = 10
BROKEN_VIEWS = broken_at_import(HANG_READY)


@pytest.mark.timeout(150)
@pytest.mark.parametrize("kind", list(BROKEN_VIEWS))
def test_rollback_matrix_under_load(start_server, django_project, kind):
    """Every way new code can fail at import rolls back under load (HUP): no failed request,
    the old pid keeps serving, the next good upgrade works."""
    broken, why = BROKEN_VIEWS[kind]
    # a short ready timeout for the hang (it costs each run that long); a real one otherwise
    ready = str(HANG_READY) if kind == "hang" else "30"
    server = runhot(start_server, django_project, "--noreload", "--ready-timeout", ready)
    port, old = server.port, first_pid(server)
    with Load(port, fresh=1, keepalive=1, slow=1, slow_seconds=0.5, max_seconds=100) as load:
        wait_until(lambda: load.report.requests > 10, 15, "load to start")
        set_version(django_project, "broken", extra=broken)
        mark = server.mark()
        os.kill(server.pid, signal.SIGHUP)
        server.wait_for(r"upgrade rolled back: generation 2 .*" + why, 40, after=mark)
        still = http_get(port)
        assert (still.pid, still.version) == (old, "v1")
        set_version(django_project, "fixed")
        new = server.upgrade(60)
        assert wait_served_by(port, new).version == "fixed"
        wait_until(lambda: new in load.report.pids, 15, "the load to reach the fix")
        report = load.stop()
    assert not report.failures, report.summary()
    assert report.slow_completed == report.slow_started, report.summary()
    assert old in report.pids
    assert server.stop() == 0
