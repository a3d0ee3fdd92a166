"""The Django server under test: ``python manage.py runhot`` on a copy of ``example_django/``
that a test may edit (bytecode caching is off there: a same-second, same-size edit could
otherwise run a stale ``.pyc``)."""

from __future__ import annotations

import os
import pathlib
import re
import shutil

from tests.harness.server import PYTHON, READY_LINE, ROOT, ServerProcess

EXAMPLE = os.path.join(ROOT, "example_django")
ROLLED_BACK = r"upgrade rolled back"


def copy_site(directory: pathlib.Path) -> pathlib.Path:
    """Copy the example project into *directory*/site; return its path."""
    target = directory / "site"
    shutil.copytree(EXAMPLE, target, ignore=shutil.ignore_patterns("__pycache__", "*.sqlite3"))
    return target


def runhot(
    start_server, site, *args: str, env: dict[str, str] | None = None, address="127.0.0.1:0"
) -> ServerProcess:
    """Start ``manage.py runhot`` in *site*; wait for the first generation; return it."""
    server = start_server(
        [PYTHON, "manage.py", "runhot", address, *args],
        cwd=str(site),
        env={"PYTHONDONTWRITEBYTECODE": "1", "EXAMPLE_LOG_REQUESTS": "0", **(env or {})},
    )
    server.wait_ready(60)
    return server


def set_version(site, version: str, extra: str = "") -> None:
    """Rewrite the example's views.py with this VERSION (and *extra* code at the end)."""
    views = site / "example" / "views.py"
    original = (pathlib.Path(EXAMPLE) / "example" / "views.py").read_text()
    text = re.sub(r"^VERSION = .*$", f"VERSION = {version!r}", original, flags=re.M)
    if extra:
        text += "\n" + extra + "\n"
    save(views, text)


def save(path: pathlib.Path, text: str) -> None:
    """Write *text* as an editor saves it, with an mtime newer than before (the stat reloader
    compares mtimes)."""
    before = path.stat().st_mtime_ns
    path.write_text(text)
    after = path.stat().st_mtime_ns
    if after <= before:
        os.utime(path, ns=(before + 10_000_000, before + 10_000_000))


def next_ready(server: ServerProcess, mark: int, timeout: float = 60) -> int:
    """Wait for the next generation's ready line after *mark*; return its pid."""
    return int(server.wait_for(READY_LINE, timeout, after=mark).group(2))


def first_pid(server: ServerProcess) -> int:
    """The first generation's pid."""
    return server.generation_pids()[1]
