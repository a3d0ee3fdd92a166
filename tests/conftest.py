"""Shared fixtures: a server factory that always cleans up and shows the server's output
when a test fails."""

from __future__ import annotations

import gc
import os
import threading
import time

import pytest

from tests.harness import ServerProcess


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        for server in getattr(item, "_grace_servers", []):
            report.sections.append(
                (f"server output ({' '.join(server.argv)[:80]})", server.output()[-6000:])
            )


@pytest.fixture(scope="session", autouse=True)
def private_state_directory(tmp_path_factory):
    """The servers and CLI calls of this test process keep their state files (status, module
    reports, warm-start seeds) in a directory of its own, not in the user's: the suite starts
    hundreds of programs, whose seeds would push the user's own out (the 32 newest are kept).
    A test about the state directory sets its own."""
    saved = os.environ.get("XDG_RUNTIME_DIR")
    os.environ["XDG_RUNTIME_DIR"] = str(tmp_path_factory.mktemp("runtime"))
    yield
    if saved is None:
        os.environ.pop("XDG_RUNTIME_DIR", None)
    else:
        os.environ["XDG_RUNTIME_DIR"] = saved


@pytest.fixture(scope="module", autouse=True)
def garbage_collected_at_the_end_of_each_module():
    """What a test module leaves to the garbage collector is collected when the module ends,
    not in the middle of another module's test: an unclosed ``select.epoll`` (no
    ResourceWarning when collected) closed during a test that counts this process's fds made
    that test fail (tests/unit/test_supervisor.py's selectors, counted by
    test_warm_preloader.py)."""
    yield
    gc.collect()


@pytest.fixture(autouse=True)
def no_thread_outlives_the_test():
    """Threads a test starts (clients, servers in process) end with it: checked after every
    other fixture's clean-up, with a short grace for threads already finishing."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 10
    while True:
        left = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not left or time.monotonic() >= deadline:
            break
        left[0].join(max(0.0, deadline - time.monotonic()))
    assert not left, f"threads outlived the test: {[t.name for t in left]}"


@pytest.fixture
def app_dir(tmp_path):
    """A directory holding the core test server's upgradable code (``appcode.py``, v1)."""
    from tests.harness import write_code

    write_code(tmp_path)
    return tmp_path


@pytest.fixture
def django_project(tmp_path):
    """A copy of ``example_django/`` the test may edit (tests/harness/django_site.py)."""
    from tests.harness.django_site import copy_site

    return copy_site(tmp_path)


@pytest.fixture
def start_server(request):
    """start_server(argv, cwd=None, env=None) -> ServerProcess, closed after the test."""
    servers: list[ServerProcess] = []
    request.node._grace_servers = servers

    def start(argv, cwd=None, env=None, cls=ServerProcess, pass_fds=()):
        server = cls(argv, cwd=cwd, env=env, pass_fds=pass_fds)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()
