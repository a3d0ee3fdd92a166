"""Process state made at import: a private random generator, and a connection pool that, like
real ones, notices a fork by its pid and starts afresh."""

import os
import random

LOADED_IN = os.getpid()
RNG = random.Random()


class Pool:
    def __init__(self) -> None:
        self.pid = os.getpid()
        self.connections: list[int] = []

    def connection(self) -> int:
        if self.pid != os.getpid():  # forked: the parent's connections are not ours
            self.pid, self.connections = os.getpid(), []
        if not self.connections:
            self.connections.append(os.getpid())
        return self.connections[0]


POOL = Pool()
FIRST_DRAW = None


def first_draw() -> float:
    """This process's first number from the library's own generator."""
    global FIRST_DRAW
    if FIRST_DRAW is None or FIRST_DRAW[0] != os.getpid():
        FIRST_DRAW = (os.getpid(), RNG.random())
    return FIRST_DRAW[1]
