"""The wire of the processes that fork on request (the warm-start template, gunicorn's molds):
newline-delimited JSON over a Unix stream socket, the fds of a generation riding with its spawn
request (``SCM_RIGHTS``), and the answer to a fork: the pid of the grandchild."""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import time
from collections.abc import Sequence
from typing import Any

MAX_MESSAGE = 64 << 20


class Wire:
    """Newline-delimited JSON over a Unix stream socket, fds riding with a message."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = b""
        #: fds received and not handed out yet, each with the stream offset of the message
        #: they came with; ``_taken``: the stream offset of ``_buffer[0]``
        self._fds: list[tuple[int, list[int]]] = []
        self._taken = 0

    def send(self, message: dict[str, Any], fds: Sequence[int] = ()) -> None:
        data = json.dumps(message, separators=(",", ":")).encode() + b"\n"
        sent = socket.send_fds(self.sock, [data], list(fds)) if fds else 0
        self.sock.sendall(data[sent:])

    def receive(self, timeout: float | None) -> tuple[dict[str, Any], list[int]] | None:
        """The next message and the fds that came with it; ``None`` at EOF.

        :raises TimeoutError: nothing complete within *timeout* seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([self.sock], [], [], left)[0]:
                raise TimeoutError("no answer")
            data, fds, _, _ = socket.recv_fds(self.sock, 1 << 16, 64)
            if fds:
                self._fds.append((self._taken + _last_start(self._buffer, data), fds))
            if not data:
                return None
            self._buffer += data
            if len(self._buffer) > MAX_MESSAGE:
                raise ValueError("message too long")
        line, _, self._buffer = self._buffer.partition(b"\n")
        end = self._taken + len(line) + 1
        fds = [fd for at, some in self._fds if at < end for fd in some]
        self._fds = [(at, some) for at, some in self._fds if at >= end]
        self._taken = end
        return json.loads(line), fds


def _last_start(buffer: bytes, data: bytes) -> int:
    """Where, in *buffer* + *data*, the message that fds received with *data* belongs to
    starts: the last message that begins within *data*. A sender passes fds with the first
    bytes of their message, and a read ends right after the bytes that carried fds, so a
    read can hold the end of earlier messages but never the start of a later one (a fork
    request sent right after a message without fds is read with it)."""
    whole = buffer + data
    newline = whole.rfind(b"\n", max(0, len(buffer) - 1), len(whole) - 1)
    if newline >= 0:
        return newline + 1
    return whole.rfind(b"\n", 0, len(buffer)) + 1  # within a message begun earlier


def close_fds(fds: Sequence[int]) -> None:
    """Close *fds* (received with a request that is refused, or not this process's)."""
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def answer_fork(wire: Wire, read_end: int, middle: int, timeout: float, what: str) -> None:
    """After a double fork, answer the pid the middle child wrote on *read_end* (the grandchild,
    re-parented to the subreaper once the middle is reaped here), or an error naming *what* was
    forked when the middle said nothing within *timeout*."""
    try:
        ready = select.select([read_end], [], [], timeout)[0]
        data = os.read(read_end, 32) if ready else b""
    finally:
        os.close(read_end)
        os.waitpid(middle, 0)
    if data.isdigit():
        wire.send({"pid": int(data)})
    else:
        wire.send({"error": f"the fork did not report {what}'s pid"})
