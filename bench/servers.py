"""The servers under comparison: how to start each one on a port, from an app directory.

One place for the command lines, so the upgrade rows (``upgrades.py``), the throughput rounds
(``throughput.py``), the wrk-across-HUPs runs (``wrk_hups.py``), the saves (``saves.py``) and
the idle trees (``memory.py``) start the same servers; and the one wait on a server's log.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable

from common import Server, bin_path

Argv = Callable[[int, str], list[str]]

EXCLUDE = "*/grace_plugins/*"  # the reloaders watch only the app, not the library
#: Our supervisor's line once the warm-start template is ready (group 1: its pid); until then
#: an upgrade starts cold.
TEMPLATE_READY = r"warm start: template \(pid (\d+)\) ready after"
DJANGO_IMPORT = (
    "import os; os.environ['DJANGO_SETTINGS_MODULE'] = 'djproject.settings'; import django;"
    " django.setup(); import djproject.urls"
)
GUNICORN_COMMON = ["-w", "2", "--graceful-timeout", "10", "--keep-alive", "5", "--timeout", "30"]
FLASK_CHECK = [bin_path("flask"), "hotrun", "--help"]
DJANGO_CHECK = [sys.executable, "manage.py", "runhot", "--help"]
GUNICORN_CHECK = [sys.executable, "-c", "import grace_plugins.gunicorn"]


def flask(*args: str, watch: bool = False) -> Argv:
    """``flask --app flask_app ARGS --port PORT``; *watch* names the code file to the reloader."""

    def argv(port: int, app_dir: str) -> list[str]:
        # flask run loads the app lazily under its reloader, after the reloader chose the
        # directories to watch: name the code file, as a user would with --extra-files.
        extra = ["--extra-files", os.path.join(app_dir, "benchcode.py")] if watch else []
        return [bin_path("flask"), "--app", "flask_app", *args, *extra, "--port", str(port)]

    return argv


def django(command: str, *args: str) -> Argv:
    """``python manage.py COMMAND 127.0.0.1:PORT ARGS``."""
    return lambda port, d: [sys.executable, "manage.py", command, f"127.0.0.1:{port}", *args]


def gunicorn(*args: str) -> Argv:
    """gunicorn serving ``flask_app:app`` with 2 workers and the bench's timeouts."""
    return lambda port, d: [
        bin_path("gunicorn"),
        *args,
        *GUNICORN_COMMON,
        "-b",
        f"127.0.0.1:{port}",
        "--chdir",
        d,
        "--control-socket",
        os.path.join(d, "gunicorn.ctl"),
        "flask_app:app",
    ]


def short(label: str) -> str:
    """The label without the command's prefix (``run --reload``), a gunicorn label its worker
    class alone (``gthread``: its configuration is the row's own)."""
    words = label.strip("`").split()
    return words[2] if words[0] == "gunicorn" else " ".join(words[1:])


def unavailable(check: list[str] | None, app_dir: str, env: dict[str, str]) -> str:
    """Why a server cannot run (its adapter is not importable: *check* fails), or ""."""
    if check is None:
        return ""
    try:
        out = subprocess.run(
            check, cwd=app_dir, env=env, capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`{' '.join(os.path.basename(a) for a in check)}` failed: {exc}"
    if out.returncode != 0:
        last = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["no output"]
        return f"adapter not available yet ({last[0][:100]})"
    return ""


def wait_in_log(server: Server, pattern: str, timeout: float) -> bool:
    """Whether *pattern* appears in the server's log within *timeout* s (read every 50 ms)."""
    deadline = time.monotonic() + timeout
    regex = re.compile(pattern)
    while time.monotonic() < deadline:
        if regex.search(server.output(10**7)):
            return True
        if server.proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False
