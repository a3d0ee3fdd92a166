"""Writing the code under upgrade: whole files at once (a reader never sees half of one), with
a newer mtime (reloaders poll it) and no stale bytecode."""

from __future__ import annotations

import os
import shutil
import time

#: What the core test server's ``/spawn`` runs: the fds and handoff variables a program started
#: by the app inherits.
CHILD_PROBE = (
    "import os, json; fds = sorted(int(f) for f in os.listdir('/proc/self/fd'));"
    " print(json.dumps({'fds': fds, 'env': [k for k in os.environ"
    " if k.startswith(('GRACE_PLUGINS_', 'LISTEN_'))]}))"
)


def write_module(path: str | os.PathLike[str], text: str) -> None:
    """Replace *path* with *text* atomically, with an mtime later than the old one."""
    path = os.fspath(path)
    old_mtime = os.stat(path).st_mtime if os.path.exists(path) else 0.0
    tmp = path + ".tmp"
    with open(tmp, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)
    mtime = max(time.time(), old_mtime + 1.0)
    os.utime(path, (mtime, mtime))
    shutil.rmtree(os.path.join(os.path.dirname(path), "__pycache__"), ignore_errors=True)


def write_code(directory, version: str = "v1", body: str = "", probe: str = CHILD_PROBE) -> None:
    """Write ``appcode.py``, the core test server's code under upgrade: ``VERSION`` is served;
    *body* runs at import (to break or slow the new code)."""
    text = f"VERSION = {version!r}\nCHILD_PROBE = {probe!r}\n{body}\n"
    write_module(os.path.join(os.fspath(directory), "appcode.py"), text)


def write_bench_code(directory: str, version: str, import_seconds: float) -> None:
    """Write ``benchcode.py``, the benchmark apps' code under upgrade (an import that takes
    *import_seconds*)."""
    text = (
        '"""The code under upgrade (written by bench/run.py)."""\n\n'
        "import time\n\n"
        f"VERSION = {version!r}\n"
        f"IMPORT_SECONDS = {import_seconds!r}\n"
        "time.sleep(IMPORT_SECONDS)\n"
    )
    write_module(os.path.join(directory, "benchcode.py"), text)
