"""Django under ``gunicorn -k grace_plugins.Worker``: Django imports the URLconf, and the views
through it, only at a worker's first request. So a save that broke a view passed every boot,
the HUP "succeeded" and every request answered 500 until the fix. A worker (and with
``--preload`` the mold) now imports the URLconf before it is ready: a broken view is rolled
back as a broken app is, and with ``--preload`` the workers share the views the mold imported.
"""

from __future__ import annotations

import os
import signal

import pytest

from tests.harness import Load, django_site, http_get
from tests.harness.gunicorn import Gunicorn, assert_clean, gunicorn_argv

pytest.importorskip("gunicorn")
pytest.importorskip("django")

BROKEN_VIEW = "raise RuntimeError('a view broken by a save')"
#: each import of views.py appends "PID VERSION" here (the site's directory)
COUNTED = (
    "with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),"
    " 'views.log'), 'a') as _log:\n"
    "    _log.write(f'{os.getpid()} {VERSION}\\n')"
)


def start(start_server, site, *extra: str) -> Gunicorn:
    argv = gunicorn_argv(site, *extra, timeout=5, apps=str(site), app="example.wsgi:application")
    env = {"PYTHONDONTWRITEBYTECODE": "1", "EXAMPLE_LOG_REQUESTS": "0"}
    server = start_server(argv, cwd=str(site), env=env, cls=Gunicorn)
    server.wait_ready()
    return server


def views_imported(site) -> list[tuple[int, str]]:
    try:
        text = (site / "views.log").read_text()
    except FileNotFoundError:
        return []
    return [(int(pid), version) for pid, version in (line.split() for line in text.splitlines())]


@pytest.mark.timeout(90)
@pytest.mark.parametrize("preload", [False, True], ids=["workers import", "--preload"])
def test_a_view_broken_by_a_save_is_rolled_back_not_served(start_server, tmp_path, preload):
    site = django_site.copy_site(tmp_path)
    server = start(start_server, site, *(["--preload"] if preload else []))
    old = set(server.workers())
    with Load(server.port, fresh=2, keepalive=2, slow=1, slow_seconds=1.0) as load:
        django_site.set_version(site, "v2", BROKEN_VIEW)
        mark = server.mark()
        os.kill(server.pid, signal.SIGHUP)
        server.wait_rollback(2, mark)
        assert set(server.workers()) == old and http_get(server.port).version == "v1"
        django_site.set_version(site, "v3")
        new = server.hup(3)
        report = load.stop()
    assert_clean(report)
    answer = http_get(server.port)
    assert (answer.status, answer.version, answer.pid in new) == (200, "v3", True)
    assert "a view broken by a save" in server.output(mark)
    assert server.stop() == 0


@pytest.mark.timeout(90)
def test_with_preload_the_views_are_imported_once_in_the_mold(start_server, tmp_path):
    site = django_site.copy_site(tmp_path)
    django_site.set_version(site, "v1", COUNTED)
    server = start(start_server, site, "--preload")
    django_site.set_version(site, "v2", COUNTED)
    new = server.hup(2)
    for _ in range(20):  # every worker answers: none imports the views at its first request
        assert http_get(server.port).version == "v2"
    v2 = [pid for pid, version in views_imported(site) if version == "v2"]
    assert len(v2) == 1 and v2[0] not in new, (v2, new)  # the mold's import, shared
    assert server.stop() == 0
