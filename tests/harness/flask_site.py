"""The Werkzeug/Flask servers under test: ``flask --app app.py hotrun`` on a copy of the seed
app (``example_flask/app.py``), and ``grace_plugins.run_simple`` from a script (:data:`SCRIPT`),
each edited in a temporary directory."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys

from tests.harness.procfs import LINUX_PROC, fd_count, zombies
from tests.harness.server import PYTHON, ROOT, ServerProcess, wait_until

FLASK = os.path.join(os.path.dirname(sys.executable), "flask")
SEED_APP = os.path.join(ROOT, "example_flask", "app.py")
#: Other work in the repository (or on a developer's machine) must not trigger upgrades in
#: tests that watch files: the repository is on PYTHONPATH, so the reloader would watch it.
NOT_THE_REPO = f"--exclude-patterns={os.path.join(ROOT, '*')}"

#: A ``run_simple`` program: its options are JSON in argv[1]; ``/boom`` raises, ``?sleep=S``
#: sleeps; the body names the pid, the VERSION and the parent pid.
SCRIPT = """
import json, os, sys, time
from grace_plugins import run_simple

VERSION = "v1"


def app(environ, start_response):
    if environ["PATH_INFO"] == "/boom":
        raise RuntimeError("boom on purpose")
    query = environ.get("QUERY_STRING", "")
    if query.startswith("sleep="):
        time.sleep(float(query[len("sleep="):]))
    body = f"WORLD! ospid:{os.getpid()} version:{VERSION} ppid:{os.getppid()}\\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


if __name__ == "__main__":
    options = json.loads(sys.argv[1])
    if isinstance(options.get("ssl_context"), list):
        options["ssl_context"] = tuple(options["ssl_context"])
    run_simple("127.0.0.1", 0, app, **options)
"""


def seed_app(directory, version: str = "v1") -> str:
    """Copy the seed app into *directory* (created) and return its path."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "app.py")
    shutil.copy(SEED_APP, path)
    set_version(path, version)
    return path


def set_version(path, version: str, extra: str = "") -> None:
    """Write the app's original source (the seed app, or :data:`SCRIPT` for ``serve.py``) with
    a new VERSION (one write, as an editor's save), with *extra* code first (to break it)."""
    path = str(path)
    if path.endswith("serve.py"):
        source = SCRIPT
    else:
        with open(SEED_APP) as handle:
            source = handle.read()
    source, count = re.subn(r"^VERSION = .*$", f'VERSION = "{version}"', source, flags=re.M)
    assert count == 1, "the app must define VERSION on one line"
    with open(path, "w") as handle:
        handle.write(extra + source)


def hotrun(start_server, directory, *args: str, app: str = "app.py") -> tuple[ServerProcess, int]:
    """Start ``flask --app APP hotrun -p 0 ARGS`` in *directory*; return (server, port)."""
    server = start_server([FLASK, "--app", app, "hotrun", "-p", "0", *args], cwd=str(directory))
    return server, server.wait_ready(30)


def start_script(start_server, directory, **options) -> tuple[ServerProcess, int, str]:
    """Start :data:`SCRIPT` as ``serve.py`` in *directory* with these ``run_simple`` options;
    return (server, port, the script's path)."""
    script = directory / "serve.py"
    script.write_text(SCRIPT)
    server = start_server([PYTHON, str(script), json.dumps(options)], cwd=str(directory))
    return server, server.wait_ready(30), str(script)


def wait_exited(server: ServerProcess, number: int, after: int = 0, timeout: float = 30) -> None:
    """Wait for generation *number* to exit after its drain (a line printed after *after*)."""
    server.wait_for(rf"generation {number} \(pid \d+\) exited after draining", timeout, after)


def assert_clean(report) -> None:
    """No failed request, and every slow request started was answered."""
    assert not report.failures, report.summary()
    assert report.slow_started == report.slow_completed, report.summary()


def stable_supervisor(server: ServerProcess, fds_before: int | None) -> None:
    """No fd growth and no zombies in the supervisor after upgrades."""
    if not LINUX_PROC or fds_before is None:
        return
    wait_until(lambda: not zombies(server.pid), 10, "the supervisor to reap its children")

    def at_most() -> bool:  # "before" may have been sampled while the state file was rewritten
        count = fd_count(server.pid)
        return count is not None and count <= fds_before

    wait_until(at_most, 5, f"at most {fds_before} fds")
