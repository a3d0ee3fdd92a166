"""Where the record directory goes when gunicorn's workers run as another user (``--user``,
``--group``): somewhere that user can reach and write, checked, never guessed.

The master (often root) makes the directory and hands it to the workers' user, as gunicorn does
with each worker's heartbeat file. Handing it over is not enough when the user cannot reach it
(``TMPDIR`` inside a directory private to root, a filesystem that refuses the change of owner):
the master then checks, from a child process that switches users exactly as gunicorn's workers
do, that the user can create a file there, and otherwise tries the next usual temporary
directory, saying so in one line. If none works it says so, with the fix, once at start.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from grace_plugins.gunicorn.records import RecordStore

#: Where to look after the temporary directory Python picked (``TMPDIR`` first).
FALLBACKS = ("/dev/shm", "/tmp", "/var/tmp")


def workers_owner(cfg: Any) -> tuple[int, int] | None:
    """(uid, gid) the workers switch to (``--user``/``--group``), if not the master's."""
    if cfg.uid != os.geteuid() or cfg.gid != os.getegid():
        return cfg.uid, cfg.gid
    return None


def create_store(cfg: Any, log: Any) -> RecordStore:
    """The master's record directory, one the workers can write (called once, in the master,
    before any worker is forked: it forks a short-lived probe). Logs one line if it is not where
    ``TMPDIR`` says, or if the workers cannot write anywhere (HUPs are then not gated on
    readiness; a broken HUP still never halts the master)."""
    owner = workers_owner(cfg)
    if owner is None:
        return RecordStore.create()
    first = tempfile.gettempdir()
    why = ""
    for parent in dict.fromkeys((first, *FALLBACKS)):
        try:
            store = RecordStore.create(owner, parent)
        except OSError as exc:
            why = why or f"{parent}: {exc.strerror or exc}"
            continue
        if writable_as(cfg, store.path):
            if parent != first:
                log.warning(
                    "grace_plugins: the workers' user (uid %s) cannot write in %s (%s); the"
                    " record directory is %s instead",
                    owner[0],
                    first,
                    why or "not reachable",
                    store.path,
                )
            return store
        why = why or f"{parent} is not reachable"
        store.remove()
    log.error(
        "grace_plugins: the workers' user (uid %s, gid %s) can write none of %s (%s), so HUPs"
        " cannot wait for the new workers to be ready. Set TMPDIR to a directory that user can"
        " reach and write.",
        *owner,
        ", ".join(dict.fromkeys((first, *FALLBACKS))),
        why,
    )
    return RecordStore.create()


def writable_as(cfg: Any, path: str) -> bool:
    """Whether a worker could create a file in *path*: a child process switches users as
    gunicorn's workers do (``set_owner_process``) and tries. Blocks a few milliseconds."""
    from gunicorn.util import set_owner_process

    pid = os.fork()
    if pid == 0:  # the probe: it never returns
        status = 1
        try:
            set_owner_process(cfg.uid, cfg.gid, initgroups=cfg.initgroups)
            probe = os.path.join(path, f".probe-{os.getpid()}")
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            os.unlink(probe)
            status = 0
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0
