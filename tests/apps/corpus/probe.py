"""The project's side of the warm-start corpus: imports every fake library (tests/fakelibs) and
reports, from inside a generation, what each one looks like there."""

import os
import random
import signal

import corpus_hooks
import corpus_lazy
import corpus_nativethread
import corpus_settings.sub.leaf as leaf  # the CMS's shape: ``import pkg.sub.leaf as x``
import corpus_socket
import corpus_state
import corpus_thread
import corpus_thread_user
from corpus_settings import sub

LIBS = [
    corpus_hooks,
    corpus_lazy,
    corpus_nativethread,
    leaf,
    sub,
    corpus_socket,
    corpus_state,
    corpus_thread,
    corpus_thread_user,
]


def report(version: str) -> dict:
    me = os.getpid()
    return {
        "pid": me,
        "version": version,
        # True: imported by this process; False: inherited, preloaded by the template
        "fresh": {lib.__name__: me == lib.LOADED_IN for lib in LIBS},
        "settings": sub.MODE,
        "leaf": leaf.VALUE,
        "thread": corpus_thread.alive() and corpus_thread_user.alive(),
        "native_threads": corpus_nativethread.threads(),
        "socket": corpus_socket.usable(),
        "usr1": signal.getsignal(signal.SIGUSR1) is corpus_hooks.on_usr1,
        "pool": corpus_state.POOL.connection() == me,
        "draw": corpus_state.first_draw(),
        "random": random.random(),
        "lazy": corpus_lazy.VERSION,
    }
