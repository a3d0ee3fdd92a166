"""The one codec for the environment variables that carry state from one process to the next.

A supervisor hands each generation ``GRACE_PLUGINS_HANDOFF``, and a re-executing supervisor
hands its next image ``GRACE_PLUGINS_SUPERVISOR``. Both are small JSON objects with a format
version (``"v"``): the two sides may run different grace_plugins versions after a
``pip install``. A value is removed from the environment as soon as it is read (subprocesses
the app starts never see it) and everything wrong with it is one line naming the variable and
the fix, never a ``KeyError``.
"""

from __future__ import annotations

import json
from collections.abc import Collection, MutableMapping
from typing import Any

from grace_plugins.errors import GraceError


def encode(version: int, fields: dict[str, Any]) -> str:
    """The variable's value: *fields* and the format *version*, as compact JSON."""
    return json.dumps({"v": version, **fields}, separators=(",", ":"))


def take(
    environ: MutableMapping[str, str], name: str, versions: Collection[int], fix: str
) -> dict[str, Any] | None:
    """Remove *name* from *environ*; return its object (``"v"`` one of *versions*), or
    ``None`` when it is unset.

    :raises GraceError: ``"<name> <problem>: <fix>."`` when it is not a JSON object of a
        version this code reads.
    """
    raw = environ.pop(name, None)
    if raw is None:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        raise GraceError(f"{name} is not valid JSON ({raw[:40]!r}): {fix}.") from None
    if not isinstance(data, dict):
        raise GraceError(f"{name} is not a JSON object: {fix}.")
    if data.get("v") not in versions:
        readable = " or ".join(str(v) for v in sorted(versions))
        raise GraceError(
            f"{name} has format version {data.get('v')!r}, this grace_plugins reads {readable}:"
            f" the other process runs another grace_plugins version; {fix}."
        )
    return data
