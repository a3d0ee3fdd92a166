"""Starts a thread that ``threading`` never sees, as a C extension does (``pthread_create``)."""

import ctypes
import os

LOADED_IN = os.getpid()
_libc = ctypes.CDLL(None)
_thread = ctypes.c_ulong()
# The thread runs libc's sleep(3600): no Python, no GIL, invisible to threading.
_started = _libc.pthread_create(ctypes.byref(_thread), None, _libc.sleep, ctypes.c_void_p(3600))
assert _started == 0, f"pthread_create failed: {_started}"


def threads() -> int:
    return len(os.listdir("/proc/self/task"))
