"""Starts a background thread at import (as APM agents and SDKs do)."""

import os
import threading
import time

LOADED_IN = os.getpid()
_beats = [0]


def _beat() -> None:
    while True:
        _beats[0] += 1
        time.sleep(0.05)


_THREAD = threading.Thread(target=_beat, name="corpus-heartbeat", daemon=True)
_THREAD.start()


def alive() -> bool:
    return _THREAD.is_alive()
