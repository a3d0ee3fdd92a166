"""New code that imports a library the template does not hold: the template imports it too, in
place, once that generation serves, so the generations it forked keep sharing its pages (a new
template would hold copies of its own); the next upgrade is forked from the same template, which
now holds the library."""

from __future__ import annotations

import sys

import pytest

from tests.harness import wait_served_by, write_code
from tests.harness.core import start

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="warm start: Linux"),
    pytest.mark.timeout(90),
]

READY = r"warm start: template \(pid (\d+)\) ready"
GREW = r"warm start: template \(pid (\d+)\) grew by (\d+) modules"
FORKED = r"warm start: pid (\d+) forked from the template"


def test_new_imports_grow_the_template_in_place(start_server, app_dir):
    server = start(start_server, app_dir)
    server.wait_warm()
    template = int(server.wait_for(READY, 5).group(1))
    # a library nothing imported yet (the core server does not import these)
    write_code(app_dir, "v2", "import wave, tomllib, xml.dom.minidom")
    mark = server.mark()
    assert wait_served_by(server.port, server.upgrade()).version == "v2"
    grew = server.wait_for(GREW, 10, after=mark)
    assert int(grew.group(1)) == template and int(grew.group(2)) >= 3
    assert server.count(READY) == 1, "no new template: the one that forks grew"
    mark = server.mark()
    write_code(app_dir, "v3", "import wave, tomllib, xml.dom.minidom")
    pid = server.upgrade()
    assert int(server.wait_for(FORKED, 5, after=mark).group(1)) == pid
    assert wait_served_by(server.port, pid).version == "v3"
    assert server.count(GREW) == 1, "what it grew by is held: nothing more to import"
    assert server.stop() == 0
