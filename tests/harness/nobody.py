"""A Python that user ``nobody`` can read, for gunicorn masters whose workers drop to it
(``--user nobody``) in tests that run as root.

A worker that switched users still imports, after the fork, what the app and gunicorn load
lazily: the standard library of the running interpreter may sit where ``nobody`` cannot read it
(pyenv under ``/root``, mode 0700), and so may the checkout and the virtualenv. :func:`build`
copies the standard library, gunicorn (with what it requires) and grace_plugins (this checkout's)
into a directory that ``nobody`` can read; the master runs the same interpreter binary with
``PYTHONHOME`` there (the binary itself is started by root only).

Import it directly (``from tests.harness import nobody``).
"""

from __future__ import annotations

import grp
import importlib.metadata
import os
import pwd
import re
import shutil
import sys
import sysconfig
import tempfile
from dataclasses import dataclass

from tests.harness.server import ROOT

#: Parts of the standard library that no test server imports (tests, GUIs, installers).
UNUSED = ("site-packages", "test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3")


def user_and_group() -> tuple[int, int, str, str] | None:
    """(uid, gid, user name, group name) of ``nobody`` and its group, or None if missing."""
    try:
        user = pwd.getpwnam("nobody")
    except KeyError:
        return None
    try:
        group = grp.getgrgid(user.pw_gid).gr_name
    except KeyError:
        return None
    return user.pw_uid, user.pw_gid, user.pw_name, group


@dataclass
class NobodyPython:
    """An interpreter (binary + ``PYTHONHOME``) and a place for app directories, all readable
    by user ``nobody``."""

    root: str
    home: str
    executable: str

    def env(self) -> dict[str, str]:
        """Variables for the master: this home, and nothing from the checkout's path."""
        return {"PYTHONHOME": self.home, "PYTHONPATH": ""}

    def app_dir(self, name: str) -> str:
        """A fresh directory (0755) for one server's code, with the tests' gunicorn app."""
        path = os.path.join(self.root, name)
        os.mkdir(path, 0o755)
        shutil.copy(os.path.join(ROOT, "tests", "apps", "gunicorn_app.py"), path)
        return path

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def build(extra: tuple[str, ...] = ()) -> NobodyPython:
    """Copy what a gunicorn master under test needs into a fresh directory (0755) in the
    system's temporary directory: the standard library (less :data:`UNUSED`), gunicorn and the
    *extra* distributions (``flask``) with what they require, and grace_plugins. Blocks a few
    seconds; the caller removes it."""
    root = tempfile.mkdtemp(prefix="grace-nobody-")
    os.chmod(root, 0o755)
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    home = os.path.join(root, "python")
    stdlib = os.path.join(home, "lib", version)
    shutil.copytree(sysconfig.get_paths()["stdlib"], stdlib, ignore=shutil.ignore_patterns(*UNUSED))
    site = os.path.join(stdlib, "site-packages")
    os.mkdir(site)
    for name in _required("gunicorn", *extra):
        _copy_distribution(name, site)
    shutil.copytree(
        os.path.join(ROOT, "grace_plugins"),
        os.path.join(site, "grace_plugins"),
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    _open_to_all(root)
    executable = getattr(sys, "_base_executable", None) or sys.executable
    return NobodyPython(root, home, executable)


def _required(*names: str) -> list[str]:
    """*names* and the installed distributions they require (extras left out, and what a
    marker excludes here, which is not installed), recursively."""
    found: list[str] = []
    todo = list(names)
    while todo:
        current = todo.pop()
        if current.lower() in (n.lower() for n in found):
            continue
        try:
            requirements = importlib.metadata.requires(current) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        found.append(current)
        for requirement in requirements:
            if "extra" not in requirement:
                todo.append(re.split(r"[^A-Za-z0-9._-]", requirement, maxsplit=1)[0])
    return found


def _copy_distribution(name: str, site: str) -> None:
    """Copy the files an installed distribution put in site-packages (not its metadata)."""
    distribution = importlib.metadata.distribution(name)
    for file in distribution.files or []:
        parts = file.parts
        if parts[0] == ".." or parts[0].endswith((".dist-info", ".egg-info")):
            continue
        if "__pycache__" in parts:
            continue
        target = os.path.join(site, *parts)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy2(str(distribution.locate_file(file)), target)


def _open_to_all(root: str) -> None:
    """Directories 0755, files 0644 (nobody reads, nobody but root writes)."""
    for folder, dirs, files in os.walk(root):
        for one in dirs:
            os.chmod(os.path.join(folder, one), 0o755)
        for one in files:
            os.chmod(os.path.join(folder, one), 0o644)
