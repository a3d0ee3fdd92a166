"""A worker forked from a mold: what gunicorn's ``spawn_worker`` does in its child, here.

The master built this worker's object (its heartbeat file, ``tmp``, which ``murder_workers``
watches) and recorded it under this process's pid; the mold forked the process. So the process
builds its own object from the mold's copy of the arbiter, on the heartbeat file the master
passed (:class:`PassedTmp`), and then runs gunicorn's child branch: the same log line, the same
hooks (``post_fork``, ``worker_exit``), the same exit statuses. It exits as gunicorn's own
workers do: ``SystemExit``, up through the (copied) master's frames to the interpreter's exit,
which runs the app's ``atexit`` hooks.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import sys
import time
import traceback
from typing import Any, NoReturn

#: Longest a new worker waits to be re-parented to the master (its middle parent exits at once).
REPARENT_TIMEOUT = 2.0


def disown(tmp_fd: int) -> None:
    """Mark the heartbeat file of a worker the master gave up on (its mold did not answer the
    fork: it died, or took too long): the master does not know that worker, so it would never
    stop it. The sticky bit: a file is never created with it (whatever ``--umask``), and the
    heartbeat is the file's times, not its mode."""
    with contextlib.suppress(OSError):
        os.fchmod(tmp_fd, stat.S_IMODE(os.fstat(tmp_fd).st_mode) | stat.S_ISVTX)


def forked_from_a_mold(tmp: Any) -> bool:
    """Whether the worker whose heartbeat file is *tmp* was forked from a mold (then so are
    its replacements: from the serving generation's mold)."""
    return isinstance(tmp, PassedTmp)


def disowned(tmp: Any) -> bool:
    """Whether *tmp*, a worker's heartbeat file, says that the master gave up on it."""
    return isinstance(tmp, PassedTmp) and tmp.disowned()


class PassedTmp:
    """gunicorn's ``WorkerTmp`` on the heartbeat file the master made for this worker (its
    ``notify`` touches it; the master's copy reads the same file)."""

    def __init__(self, fd: int) -> None:
        self._file = os.fdopen(fd, "w+b", 0)

    def notify(self) -> None:
        now = time.monotonic()
        os.utime(self._file.fileno(), (now, now))

    def last_update(self) -> float:
        return os.fstat(self._file.fileno()).st_mtime

    def fileno(self) -> int:
        return self._file.fileno()

    def disowned(self) -> bool:
        try:
            return bool(os.fstat(self._file.fileno()).st_mode & stat.S_ISVTX)
        except (OSError, ValueError):
            return False

    def close(self) -> None:
        self._file.close()


def become_worker(arbiter: Any, age: int, tmp_fd: int, since: float, middle: int) -> NoReturn:
    """Run as the worker of gunicorn's *age* (in the mold's grandchild); never returns.

    :param middle: the pid of the process between the mold and this one (it exits at once)
    :param since: when the mold began importing (saves since then count, with ``--reload``)
    """
    from gunicorn import util
    from gunicorn.errors import AppImportError

    deadline = time.monotonic() + REPARENT_TIMEOUT
    while os.getppid() == middle and time.monotonic() < deadline:
        time.sleep(0.0005)  # until re-parented to the master (the worker checks getppid)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the mold's; the worker sets its own
    util.seed()  # before the object: max_requests' jitter must differ between workers
    worker = arbiter.worker_class(
        age, arbiter.pid, arbiter.LISTENERS, arbiter.app, arbiter.timeout / 2.0, arbiter.cfg,
        arbiter.log,
    )  # fmt: skip
    worker.tmp.close()
    worker.tmp = PassedTmp(tmp_fd)
    worker.loading_since = since
    worker.pid = os.getpid()
    # gunicorn's Arbiter.spawn_worker, in the child (--reuse-port is refused at start)
    try:
        util._setproctitle(f"worker [{arbiter.proc_name}]")
        arbiter.log.info("Booting worker with pid: %s", worker.pid)
        arbiter.cfg.post_fork(arbiter, worker)
        worker.init_process()
        sys.exit(0)
    except SystemExit:
        raise
    except AppImportError as e:
        arbiter.log.debug("Exception while loading the application", exc_info=True)
        print(f"{e}", file=sys.stderr)
        sys.stderr.flush()
        sys.exit(arbiter.APP_LOAD_ERROR)
    except Exception as e:
        arbiter.log.exception("Exception in worker process")
        print(f"{e}", file=sys.stderr)
        sys.stderr.flush()
        sys.exit(arbiter.WORKER_BOOT_ERROR if not worker.booted else -1)
    finally:
        arbiter.log.info("Worker exiting (pid: %s)", worker.pid)
        try:
            worker.tmp.close()
            arbiter.cfg.worker_exit(arbiter, worker)
        except Exception:
            arbiter.log.warning("Exception during worker exit:\n%s", traceback.format_exc())
