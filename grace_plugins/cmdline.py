"""The program's command line: the one reading of ``sys.orig_argv`` the package makes.

``sys.argv`` is the tail of ``sys.orig_argv`` (3.10+) less the interpreter: its first item is
where the program starts (the script, the module's file for ``-m``, ``-c`` for code), and what
comes before it are the interpreter's own options. From that split come the command line that
re-runs the program in a generation (:func:`program_argv`: console scripts, ``python -m``,
``python -c`` and interpreter flags, a script path made absolute from :func:`working_dir`),
the flags the lean supervisor and the warm-start template start with
(:func:`interpreter_flags`), and what a template re-runs in-process (:func:`parse_program`).
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Program:
    """A command line, split: interpreter flags, what runs, and its arguments."""

    flags: list[str]
    kind: str  # "script", "module", or "code" (-c)
    target: str  # the script's path, the module's name, or the code
    args: list[str]  # what follows the target


def split(args: Sequence[str], argv_len: int) -> Program | None:
    """Split *args* (``sys.orig_argv[1:]``) given ``len(sys.argv)``; ``None`` when they do not
    say (standard input, an interpreter without ``orig_argv``)."""
    args = list(args)
    index = len(args) - argv_len
    if index < 0 or index >= len(args):
        return None
    before = args[index - 1] if index > 0 else ""
    target = args[index]
    if before in ("-m", "-c"):
        kind = "module" if before == "-m" else "code"
        return Program(args[: index - 1], kind, target, args[index + 1 :])
    if target.startswith("-m") and len(target) > 2:
        return Program(args[:index], "module", target[2:], args[index + 1 :])
    if target.startswith("-"):
        return None
    return Program(args[:index], "script", target, args[index + 1 :])


def parse_program(argv: Sequence[str], argv_len: int) -> Program | None:
    """What a template can re-run in-process from ``[python, *args]`` (:func:`program_argv`):
    a script given by its absolute path, or a module; ``None`` otherwise (``-c``, standard
    input). *argv_len* is ``len(sys.argv)``."""
    program = split(argv[1:], argv_len)
    if program is None or program.kind == "code":
        return None
    if program.kind == "script" and not os.path.isabs(program.target):
        return None
    return program


def same_interpreter(path: str) -> bool:
    """Whether *path* names this interpreter, however it was spelt: a program started as
    ``../.venv/bin/python app.py`` keeps the ``..`` in its ``sys.executable``, a process
    that re-executed itself from there has it normalised."""
    return os.path.normpath(path) == os.path.normpath(interpreter())


def interpreter() -> str:
    """This interpreter as the program's command line names it for later processes:
    ``sys.executable``, spelt from :func:`working_dir` when it lies inside it. A console
    script names the interpreter of the directory its environment was made in
    (``releases/r1/.venv/bin/python``), and through ``current`` a virtual environment inside
    each release is the new release's once ``current`` points there (see :func:`pinned`).
    Read once: the old release may be deleted later, with the supervisor's directory."""
    return _interpreter(sys.executable)


@functools.lru_cache(maxsize=8)
def _interpreter(executable: str) -> str:
    return respelt(executable, os.getcwd(), working_dir())


def pinned(argv: list[str], cwd: str) -> tuple[list[str], str]:
    """*argv* and *cwd* (spelt through a symlink) as they lead now: a process started so
    stays in the release it started in (its ``sys.prefix``, so its later imports, name that
    release's directory, not ``current``, which a deploy may switch while it serves)."""
    here = os.path.realpath(cwd)
    return [respelt(argv[0], cwd, here), *argv[1:]], here


def respelt(path: str, old: str, new: str) -> str:
    """*path* with its leading directory *old* spelt *new* (the same directory, through a
    symlink or not); as it is when it does not lie inside *old*, or climbs out of it."""
    inside = old.rstrip(os.sep) + os.sep
    rest = path[len(inside) :]
    if path.rstrip(os.sep) == old.rstrip(os.sep):
        return new
    if old == new or not path.startswith(inside) or os.pardir in rest.split(os.sep):
        return path
    return os.path.join(new, rest)


def _this() -> tuple[list[str], Program | None]:
    args = list(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))[1:]
    return args, split(args, len(sys.argv))


def program_argv() -> list[str]:
    """The command line that re-runs this program (interpreter flags included)."""
    args, program = _this()
    if program is None or program.kind != "script" or not os.path.exists(program.target):
        return [interpreter(), *args]
    return [interpreter(), *program.flags, absolute(program.target), *program.args]


def absolute(path: str) -> str:
    """*path* made absolute from :func:`working_dir`. ``..`` is left for the kernel to
    follow: after a symlink, it leads to the parent of the link's target, not of the link."""
    joined = os.path.join(working_dir(), path)
    return joined if os.pardir in joined.split(os.sep) else os.path.normpath(joined)


def working_dir(environ: Mapping[str, str] = os.environ) -> str:
    """The working directory as the user named it: ``$PWD`` (the shell's, symlinks kept) when
    it is this directory, else the physical one. A deploy that points a ``current`` symlink at
    a new release, then asks for an upgrade, gets the new release: a generation started in
    ``$PWD`` resolves the symlink again, one started in ``os.getcwd()`` would run the old
    release (gunicorn's ``util.getcwd`` does the same for its workers and re-exec)."""
    physical = os.getcwd()
    named = environ.get("PWD", "")
    named = named.rstrip(os.sep) or named
    if not os.path.isabs(named) or named == physical:
        return physical
    try:
        here, there = os.stat(physical), os.stat(named)
    except OSError:
        return physical
    return named if (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino) else physical


def interpreter_flags() -> list[str]:
    """The interpreter's own options on this process's command line (``-X dev``, ``-W
    error``...), without what it runs."""
    program = _this()[1]
    return [] if program is None else program.flags


def program_path0(program: Program, cwd: str) -> str:
    """The ``sys.path[0]`` the interpreter gives this program (physical, as its own: a
    ``current`` symlink a deploy switches must not change what a running process imports)."""
    if program.kind == "script":
        return os.path.dirname(os.path.realpath(program.target))
    return os.path.realpath(cwd)
