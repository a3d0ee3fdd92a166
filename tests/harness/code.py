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


#: A CMS's libraries that read its settings at import: enough for a poor bet (preload.poor_bet)
CMS_LIBRARIES = 80


def write_cms_libraries(libs, module_text: str) -> str:
    """Write the package ``corpus_cms`` under *libs*: :data:`CMS_LIBRARIES` modules of
    *module_text* each (what a CMS's libraries do at import). Returns the code that imports
    them all (an app's body)."""
    package = os.path.join(os.fspath(libs), "corpus_cms")
    os.makedirs(package, exist_ok=True)
    write_module(os.path.join(package, "__init__.py"), "")
    for number in range(CMS_LIBRARIES):
        write_module(os.path.join(package, f"m{number}.py"), module_text)
    return "\n".join(f"import corpus_cms.m{number}" for number in range(CMS_LIBRARIES))


def broken_at_import(ready_timeout: int, import_error: int = 1) -> dict[str, tuple[str, str]]:
    """Every way new code can fail at import, and the rollback line each must give: {kind:
    (code, regex)}. A generation that fails before it is ready exits with the status the
    program itself would have had (1 for an exception, N for ``sys.exit(N)``; for an
    ``ImportError``, *import_error*: ``flask run`` exits 2, its usage error); a hang is cut
    at *ready_timeout* s."""
    return {
        "syntax error": ("def broken(:\n", r"exited \(exit status 1\)"),
        "missing module": (
            "import module_that_does_not_exist\n",
            rf"exited \(exit status {import_error}\)",
        ),
        "sys.exit(3)": ("import sys\nsys.exit(3)\n", r"exited \(exit status 3\)"),
        "sys.exit(msg)": (
            "import sys\nsys.exit('broken on purpose')\n",
            r"exited \(exit status 1\)",
        ),
        "os._exit(3)": ("import os\nos._exit(3)\n", r"exited \(exit status 3\)"),
        "os.abort()": ("import os\nos.abort()\n", r"killed by SIGABRT"),
        "exception": ("raise RuntimeError('broken on purpose')\n", r"exited \(exit status 1\)"),
        "hang": ("import time\ntime.sleep(600)\n", rf"was not ready within {ready_timeout} s"),
    }
