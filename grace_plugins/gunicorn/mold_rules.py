"""The molds' rules (pure: no process, no file): which mold forks a worker, which molds are no
longer needed, and whether a mold may be forked at all.

With ``--preload``, each generation's app is imported once, in a *mold* (a process forked from
the master), and the generation's workers are forked from it (see docs/gunicorn.md). A worker
the reload forks (a *member* of the new generation) comes from that generation's mold; any
other (a respawn after a crash, ``max_requests``, a heartbeat kill, TTIN) from the mold of the
generation that serves: the code it runs is the code being served, whatever is on disk.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence

from grace_plugins.gunicorn.verdicts import ROLLED_BACK


def pick(
    age: int,
    members: range,
    newest: int,
    serving: int,
    molds: Collection[int],
    verdicts: Mapping[int, str | None],
) -> int | None:
    """The generation whose mold forks the worker of gunicorn's *age*, or ``None`` (no mold
    can: gunicorn forks it from the master, and it imports the app itself).

    *members*: the ages of the newest generation's members; *serving*: the newest generation
    promoted (0 before any), with or without a mold; *molds*: the generations whose mold is
    ready; *verdicts*: each generation's verdict (``None`` while it starts).
    """
    if age in members:
        return newest if newest in molds else None
    if serving:  # its mold, or none: never an older generation's code, nor one still starting
        return serving if serving in molds else None
    starting = [gen for gen in molds if verdicts.get(gen) is None]
    return max(starting, default=None)


def to_retire(molds: Iterable[int], verdicts: Mapping[int, str | None], serving: int) -> list[int]:
    """The molds no worker will come from any more: those of generations rolled back, and
    those older than *serving*, the newest promoted generation (whether or not it has a mold:
    one whose workers each imported the app, or built without ``--preload``, counts)."""
    return [gen for gen in sorted(molds) if gen < serving or verdicts.get(gen) == ROLLED_BACK]


def unsafe(
    threads: Sequence[str],
    native_threads: int,
    sockets: Sequence[str],
    files: Sequence[str],
    ran: str,
) -> str:
    """Why forking workers from this mold would not be safe ("" if it is): a thread alive
    after the import (a fork copies only the calling thread: locks its others hold stay held
    in every worker), a socket opened at import (a database or cache connection that every
    worker would share), or a file it opened for reading and writing (an SQLite database: it
    must not be used across a fork). *threads*: the names of the other Python threads;
    *native_threads*: threads the ``threading`` module does not know; *sockets* and *files*:
    what each new one is; *ran*: what ran in the mold (the import, and maybe the ready
    check's request)."""
    if threads:
        more = f" and {len(threads) - 2} more" if len(threads) > 2 else ""
        names = ", ".join(repr(name) for name in threads[:2])
        return f"{ran} started a thread ({names}{more})"
    if native_threads > 0:
        return f"{ran} started a thread from C (not one of Python's threads)"
    if sockets:
        return f"{ran} opened a socket and kept it open ({sockets[0]})"
    if files:
        return (
            f"{ran} opened a file for reading and writing and kept it open ({files[0]}:"
            " a database every worker would share; close it before the import ends, or open it in"
            " each worker)"
        )
    return ""


def threshold_after_import(
    before: tuple[int, int, int], during: tuple[int, int, int], now: tuple[int, int, int]
) -> tuple[int, int, int]:
    """The collector's thresholds once the app is imported: the mold imports with them at
    *during* (from *before*); each one the app set at import (*now* differs from *during*)
    stays the app's, the others are set back."""
    pairs = zip(before, during, now, strict=True)
    back = [old if current == ours else current for old, ours, current in pairs]
    return (back[0], back[1], back[2])


#: The variable that turns the molds off (``GRACE_MOLDS=off``: gunicorn's own ``--preload``).
MOLDS_VAR = "GRACE_MOLDS"
_ON, _OFF = ("on", "1", "yes", "true"), ("off", "0", "no", "false")


def molds_wanted(value: str | None) -> bool:
    """Whether ``--preload`` makes molds, from ``GRACE_MOLDS`` (unset: yes).

    :raises ValueError: one line, for a value that is neither on nor off.
    """
    if value is None or value.strip().lower() in ("", *_ON):
        return True
    if value.strip().lower() in _OFF:
        return False
    raise ValueError(
        f"{MOLDS_VAR}={value!r} is neither on nor off. Set it to off for gunicorn's own"
        " --preload (the app imported in the master, HUP keeps the old code), or unset it."
    )
