"""Registers an ``atexit`` hook and a ``SIGUSR1`` handler at import; each writes a line to the
file named by ``CORPUS_HOOKS_LOG``."""

import atexit
import os
import signal
import threading

LOADED_IN = os.getpid()


def _log(what: str) -> None:
    path = os.environ.get("CORPUS_HOOKS_LOG")
    if path:
        with open(path, "a") as handle:
            handle.write(f"{what} {os.getpid()}\n")


def on_usr1(signum, frame) -> None:
    _log("usr1")


atexit.register(_log, "atexit")
if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGUSR1, on_usr1)
