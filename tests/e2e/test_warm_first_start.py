"""The very first start of ``manage.py runhot`` (no seed: this command line never ran here) forks
its first generation from a template of what ``manage.py`` had imported (Django set up), so that
generation shares the template's pages from its start; the template then grows by what the
generation imported beyond those, and every upgrade is forked from that same template.
``flask hotrun`` imports the app only in its generations: its first generation starts cold."""

from __future__ import annotations

import os
import sys

import pytest

from grace_plugins.preload import POOR_LEFT
from tests.harness import django_site, flask_site, http_get, wait_served_by
from tests.harness.code import write_cms_libraries

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="warm start: Linux"),
    pytest.mark.timeout(120),
]

READY = r"warm start: template \(pid (\d+)\) ready"
FORKED = r"warm start: pid (\d+) forked from the template"


def test_runhot_first_start_forks_its_first_generation_from_what_manage_py_imported(
    start_server, tmp_path
):
    pytest.importorskip("django")
    site = django_site.copy_site(tmp_path)
    server = django_site.runhot(start_server, site, "--noreload")
    first = server.generation_pids()[1]
    forked = server.wait_for(FORKED, 1)  # said before the first generation was ready
    assert int(forked.group(1)) == first
    assert http_get(server.port).pid == first
    template = int(server.wait_for(READY, 1).group(1))
    django_site.set_version(site, "v2")
    pid = server.upgrade()
    assert wait_served_by(server.port, pid).version == "v2"
    assert server.count(FORKED) == 2 and server.count(READY) == 1, "one template, grown in place"
    assert os.path.exists(f"/proc/{template}"), "the template that forked both still serves"
    assert "Exception ignored" not in server.output()
    assert server.stop() == 0


def test_flask_hotrun_first_start_is_cold_and_its_next_start_warm(start_server, tmp_path):
    if not os.path.exists(flask_site.FLASK):
        pytest.skip("flask is not installed")
    flask_site.seed_app(tmp_path)
    argv = [flask_site.FLASK, "--app", "app.py", "hotrun", "-p", "0", "--no-reload"]
    env = {"PYTHONDONTWRITEBYTECODE": "1"}
    first = start_server(argv, cwd=str(tmp_path), env=env)
    first.wait_ready(30)
    first.wait_for(READY, 20)  # built from the cold generation's modules: the next start's seed
    assert first.count(FORKED) == 0, "the app is imported in generations only: a cold start"
    assert first.stop() == 0
    again = start_server(argv, cwd=str(tmp_path), env=env)
    again.wait_ready(30)
    assert int(again.wait_for(FORKED, 1).group(1)) == again.generation_pids()[1]
    assert again.stop() == 0


def test_runhot_first_start_does_not_wait_for_a_template_that_leaves_out_most_imports(
    start_server, tmp_path_factory
):
    """A first start of a site whose libraries read its settings at import (a CMS: hundreds
    of them): the template built from what ``manage.py`` imported says, early, that it is
    leaving most of them out; it is stopped and the first generation starts cold at once
    (on a generated Wagtail site: 3.4 s to the first answer, against 5.0 s when it waited).
    The template is built again from what that generation reported; upgrades fork from it."""
    pytest.importorskip("django")
    libs = tmp_path_factory.mktemp("cms")
    reads_settings = "from django.conf import settings\n\nDEBUG_AT_IMPORT = settings.DEBUG\n"
    body = write_cms_libraries(libs, reads_settings)
    site = django_site.copy_site(tmp_path_factory.mktemp("site"))
    django_site.set_version(site, "v1", body)  # imported by the URLconf: by the checks
    env = {"PYTHONPATH": str(libs)}
    server = django_site.runhot(start_server, site, "--noreload", env=env)
    poor = r"poor bet for it \(left out (\d+) of the \d+ imports tried\); generation 1 starts cold"
    assert int(server.wait_for(poor, 1).group(1)) >= POOR_LEFT
    assert server.count(FORKED) == 0
    server.wait_for(READY, 30)  # built again, from generation 1's report
    django_site.set_version(site, "v2", body)
    pid = server.upgrade()
    assert wait_served_by(server.port, pid).version == "v2"
    assert server.count(FORKED) == 1, "the upgrade is forked from the template"
    assert server.stop() == 0
