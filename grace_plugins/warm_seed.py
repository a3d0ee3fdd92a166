"""The module report a program's template was built from, kept for its next start.

A template built from what a serving generation reports it imported comes after that
generation, which then shares nothing with it: two copies of the libraries for as long as it
serves (about 1.26 x ``runserver``'s memory for a Django site, 1.06 x once a generation is
forked). So the supervisor keeps the report behind each usable template as the *seed* of its
program (the command line, working directory, interpreter and the variables that choose what
it imports), in the private state directory (a runtime directory: gone at reboot). A start
builds its template from the seed first and forks the first generation from it, so that it
shares the template's pages from the start. At a program's very first start, the seed is what
the process the user started imported before it became the supervisor, where that includes
the app (:func:`plant`). An unreadable seed, or a template slower than the wait: the first
generation starts cold.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time
from collections.abc import Mapping
from typing import NamedTuple

from grace_plugins import cmdline, preload
from grace_plugins.atomic import write_atomic
from grace_plugins.process import process_start_time
from grace_plugins.state import state_dir

#: How long the first generation may wait for a seeded template: this many times as long as
#: the template took last time, and at least :data:`MIN_WAIT` seconds.
WAIT_FACTOR = 2.0
MIN_WAIT = 2.0
#: Seeds kept at most (the newest, by when their program last built a template).
MAX_SEEDS = 32


#: The environment variables that choose what a program imports: part of its identity.
KEY_VARS = ("DJANGO_SETTINGS_MODULE", "FLASK_APP", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")


def seed_path(argv: list[str], cwd: str, env: Mapping[str, str]) -> str:
    """Where the seed of the program *argv* run in *cwd* with *env* (by this interpreter) is
    kept."""
    chosen = {name: env.get(name) for name in KEY_VARS}
    # as spelled: "site/../.venv/bin/python" in the process the user started is
    # ".venv/bin/python" once it re-executed itself (symlinks kept: one per environment)
    interpreter = os.path.normpath(os.path.abspath(cmdline.interpreter()))
    key = json.dumps([interpreter, cwd, argv, chosen]).encode()
    return os.path.join(state_dir(), f"seed-{hashlib.sha256(key).hexdigest()[:24]}.json")


def keep(
    report: str,
    argv: list[str],
    cwd: str,
    env: Mapping[str, str],
    template_ms: int,
    left: list[list[str]] | None = None,
    tried: int = 0,
) -> None:
    """Keep module report file *report*, from which a usable template was built in
    *template_ms*, leaving out the top-level imports *left* ([name, culprit, reason]) of the
    *tried*, as the seed of its program: its template does not try those again (undoing a
    refused import and importing again what it shared with others made the template of a CMS
    site take 2.1 s where a cold start imports in 1.3). Never raises (warm start is an
    optimisation)."""
    with contextlib.suppress(Exception):
        with open(report) as handle:
            data = json.load(handle)
        data["template_ms"] = int(template_ms)
        data["left"] = left or []
        data["tried"] = int(tried)
        write_atomic(seed_path(argv, cwd, env), json.dumps(data, separators=(",", ":")))
        prune(state_dir())


def plant(argv: list[str], cwd: str, env: Mapping[str, str]) -> None:
    """At a program's first start (no seed yet), keep the modules this process imported
    before serving (``manage.py`` set Django up; a program calling ``run_simple`` imported its
    app) as its seed, with this process's age as the time a template takes to import them: the
    first generation is then forked from a template of those, and shares its pages, instead
    of starting cold beside a template built after it (which shares nothing with it). The
    template grows, in place, by what the first generation imported beyond them. Never
    raises."""
    if not sys.platform.startswith("linux"):
        return  # warm start is Linux's only
    with contextlib.suppress(Exception):
        if find(argv, cwd, env) is not None:
            return
        started = process_start_time()
        age_ms = 0 if started is None else max(0, round((time.time() - started) * 1000))
        data = {**preload.module_report(), "template_ms": age_ms, "left": []}
        write_atomic(seed_path(argv, cwd, env), json.dumps(data, separators=(",", ":")))
        prune(state_dir())


def prune(directory: str, keep_newest: int = MAX_SEEDS) -> None:
    """Remove all but the *keep_newest* most recently written seeds in *directory*."""
    with contextlib.suppress(OSError):
        seeds = [e for e in os.scandir(directory) if e.name.startswith("seed-")]
        seeds.sort(key=lambda entry: entry.stat().st_mtime_ns, reverse=True)
        for old in seeds[keep_newest:]:
            with contextlib.suppress(OSError):
                os.unlink(old.path)


class Seed(NamedTuple):
    """A program's seed, as its next start reads it."""

    path: str
    #: how long the first generation may wait for a template built from it (a first budget)
    wait: float
    #: why its template is a poor bet for the first generation (:func:`.preload.poor_bet`)
    poor: str | None


def find(argv: list[str], cwd: str, env: Mapping[str, str]) -> Seed | None:
    """The seed of this program, or None."""
    with contextlib.suppress(Exception):
        path = seed_path(argv, cwd, env)
        with open(path) as handle:
            data = json.load(handle)
        modules, left = data.get("modules"), len(data.get("left") or [])
        if data.get("v") == preload.REPORT_VERSION and modules:
            wait = max(MIN_WAIT, WAIT_FACTOR * int(data.get("template_ms", 0)) / 1000)
            tried = int(data.get("tried") or len(modules))  # the template's count, as it judged
            why = f"its last template left out {left} of the {tried} imports it tried"
            return Seed(path, wait, why if preload.poor_bet(left, tried) else None)
    return None
