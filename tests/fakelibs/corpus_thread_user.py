"""A library that imports one that starts a thread: it must be left out with it."""

import os

import corpus_thread

LOADED_IN = os.getpid()


def alive() -> bool:
    return corpus_thread.alive()
