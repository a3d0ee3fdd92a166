"""The core test server (``tests/apps/core_server.py``) as the end-to-end tests start it: a
framework-free server whose upgradable code is ``appcode.py`` in its working directory."""

from __future__ import annotations

import os

from tests.harness.server import PYTHON, ROOT, ServerProcess

SERVER = os.path.join(ROOT, "tests", "apps", "core_server.py")


def start(
    start_server,
    app_dir,
    address: str = "127.0.0.1:0",
    ready: float = 10,
    drain: float = 10,
    interval: float = 0.1,
    extra=(),
    env: dict[str, str] | None = None,
    pass_fds=(),
) -> ServerProcess:
    """Start the core test server in *app_dir* (with *pass_fds* inherited) and wait for its
    first generation; upgrades may follow each other every *interval* s."""
    argv = [PYTHON, SERVER, address, f"--ready={ready}", f"--drain={drain}"]
    argv += [f"--interval={interval}", *extra]
    server = start_server(argv, cwd=app_dir, env=env, pass_fds=pass_fds)
    server.wait_ready()
    return server
