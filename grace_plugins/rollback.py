"""What a failed import leaves broken in ``sys.modules``, and its removal (the template's).

Python removes only the modules whose import failed. Broken are the modules it added that are
*orphans* (their package failed: ``pkg.sub.leaf`` without ``pkg.sub``, and ``import pkg.sub.leaf``
then fails in every process forked from here) or that *hold* a class, function or module of a
failed or removed module (a circular import's half-run module). A module that imported cleanly
stays: removing it would make duplicates of its classes for whoever keeps them (a lazy package's
cached attribute; seen on a CMS: pydantic's ``BaseModel`` against a re-imported metaclass).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Mapping, Sequence
from types import FunctionType, ModuleType


def undo(
    before: Mapping[str, ModuleType], attempted: Sequence[str], culprits: Sequence[str]
) -> list[str]:
    """Remove from ``sys.modules`` what a failed import left broken (see the module), and the
    *culprits* that did import (one left an fd open, or is the project's); the names removed.

    *before*: ``sys.modules`` before the import; *attempted*: every name it tried to import.
    """
    gone = {name for name in attempted if name not in sys.modules}
    gone.update(name for name in culprits if name in sys.modules and name not in before)
    added = [name for name in sys.modules if name not in before]
    removed: list[str] = []
    while True:
        found = [name for name in added if is_broken(name, gone)]
        if not found:
            return removed
        for name in found:
            module = sys.modules.pop(name)
            added.remove(name)
            gone.add(name)
            removed.append(name)
            parent, _, child = name.rpartition(".")
            holder = sys.modules.get(parent) if parent else None
            if holder is not None and vars(holder).get(child) is module:
                with contextlib.suppress(AttributeError, TypeError):
                    delattr(holder, child)


def is_broken(name: str, gone: set[str]) -> bool:
    """Whether module *name* is, or is in, a package in *gone*, or holds something of one.
    Types only: a value's own attribute lookup may run library code (Django's lazy settings)."""
    if name in gone or name.rpartition(".")[0] in gone:
        return True
    for value in list(vars(sys.modules[name]).values()):
        kind = type(value)
        if issubclass(kind, ModuleType):
            owner = vars(value).get("__name__")
        elif issubclass(kind, type):
            owner = vars(value).get("__module__")
        elif kind is FunctionType:
            owner = value.__module__
        else:
            continue
        if owner in gone:
            return True
    return False
