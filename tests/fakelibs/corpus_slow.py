"""A library slow to import on this run: ``CORPUS_SLOW=cpu:S`` computes for S seconds at import
(a big library on a loaded machine), ``CORPUS_SLOW=sleep:S`` waits S seconds (blocked on a lock
or the network); unset, it imports at once."""

import os
import time

LOADED_IN = os.getpid()

_how, _, _seconds = os.environ.get("CORPUS_SLOW", "").partition(":")
if _how == "cpu":
    _end = time.monotonic() + float(_seconds)
    while time.monotonic() < _end:
        pass
elif _how == "sleep":
    time.sleep(float(_seconds))
