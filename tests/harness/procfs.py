"""One reader of Linux ``/proc`` for tests and benchmarks: fd counts, children, zombies, and
the identity of a process (pid + start time), so clean-up kills only what it recorded.

On systems without ``/proc`` every function answers ``None`` or an empty result; callers skip
the checks that need it (:data:`LINUX_PROC`).
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from tests.harness import sockdiag

LINUX_PROC = os.path.isdir("/proc/self/fd")


@dataclass(frozen=True)
class ProcStat:
    """The fields of ``/proc/<pid>/stat`` the harness uses."""

    pid: int
    state: str
    ppid: int
    pgrp: int
    session: int
    starttime: int  # clock ticks since boot: with the pid, names one process for good


def parse_stat(text: str) -> ProcStat:
    """Parse one ``/proc/<pid>/stat`` line (the command name may hold spaces and parens)."""
    head, _, tail = text.rpartition(")")
    pid = int(head.split("(", 1)[0])
    fields = tail.split()
    return ProcStat(
        pid=pid,
        state=fields[0],
        ppid=int(fields[1]),
        pgrp=int(fields[2]),
        session=int(fields[3]),
        starttime=int(fields[19]),
    )


def stat(pid: int) -> ProcStat | None:
    """The process *pid* as ``/proc`` shows it now, or None if it is gone (or no ``/proc``)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return parse_stat(handle.read())
    except (OSError, ValueError, IndexError):
        return None


def fd_count(pid: int) -> int | None:
    """Open fds of *pid*, or None if unknown."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def fd_links(pid: int) -> list[str]:
    """What each open fd of *pid* points to (``socket:[…]``, a path…); [] if unknown."""
    links = []
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return []
    for fd in fds:
        with contextlib.suppress(OSError):  # closed meanwhile
            links.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
    return links


def socket_count(pid: int) -> int:
    """Sockets *pid* holds open (listeners and connections)."""
    return sum(link.startswith("socket:") for link in fd_links(pid))


def established_sockets(remote_port: int | None = None) -> set[str]:
    """The ``socket:[inode]`` links of ESTABLISHED TCP sockets (IPv4 and IPv6); with
    *remote_port*, only those whose peer uses that port (the server side of a client's
    connection, when the client's own port is given). Asked of the kernel's sock_diag when
    it answers (fast whatever the number of TIME_WAIT sockets), else read from ``/proc``."""
    try:
        found = [
            entry
            for family in (socket.AF_INET, socket.AF_INET6)
            for entry in sockdiag.established(family)
        ]
    except OSError:
        return _established_from_proc(remote_port)
    return {f"socket:[{inode}]" for _, remote, inode in found if remote_port in (None, remote)}


def _established_from_proc(remote_port: int | None) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as handle:
            for line in handle.readlines()[1:]:
                fields = line.split()
                if fields[3] != "01":
                    continue
                if remote_port is not None and int(fields[2].rsplit(":", 1)[1], 16) != remote_port:
                    continue
                inodes.add(f"socket:[{fields[9]}]")
    return inodes


def established_connections(pid: int) -> int:
    """TCP connections *pid* holds in the ESTABLISHED state: a request in flight, not the
    listener, nor a connection its client already closed (CLOSE_WAIT) that a handler thread
    has not closed yet."""
    inodes = established_sockets()
    return sum(link in inodes for link in fd_links(pid))


def holder_of(pids: Iterable[int], client_port: int) -> int | None:
    """Which of *pids* holds the server side of the connection from *client_port*."""
    inodes = established_sockets(client_port)
    for pid in pids:
        if inodes.intersection(fd_links(pid)):
            return pid
    return None


def child_pids(pid: int) -> list[int] | None:
    """Direct children of *pid*, zombies included; None if unknown."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    children: list[int] = []
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as handle:
                children += [int(p) for p in handle.read().split()]
        except OSError:
            pass
    return children


def is_zombie(pid: int) -> bool:
    """True if *pid* has exited and waits to be reaped (False if gone or unknown)."""
    found = stat(pid)
    return found is not None and found.state == "Z"


def gone_or_zombie(pid: int) -> bool:
    """True once *pid* no longer runs."""
    found = stat(pid)
    return found is None or found.state == "Z"


def zombies(pid: int) -> list[int]:
    """Children of *pid* that exited and were not reaped."""
    return [child for child in child_pids(pid) or [] if is_zombie(child)]


def live_children(pid: int) -> list[int]:
    """Children of *pid* still running (zombies left out)."""
    return [child for child in child_pids(pid) or [] if not gone_or_zombie(child)]


def all_stats() -> list[ProcStat]:
    """Every process visible in ``/proc``."""
    found = []
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    for name in names:
        if name.isdigit():
            one = stat(int(name))
            if one is not None:
                found.append(one)
    return found


def descendants(root: ProcStat) -> list[ProcStat]:
    """Every live descendant of *root*, provided *root* is still the same process (same start
    time), so a reused pid never makes a stranger's children ours."""
    current = stat(root.pid)
    if current is None or current.starttime != root.starttime:
        return []
    table = all_stats()
    by_parent: dict[int, list[ProcStat]] = {}
    for one in table:
        by_parent.setdefault(one.ppid, []).append(one)
    found: list[ProcStat] = []
    todo = [root.pid]
    while todo:
        for child in by_parent.get(todo.pop(), []):
            if child.starttime >= root.starttime:  # a child is never older than its parent
                found.append(child)
                todo.append(child.pid)
    # the root must still be itself after the scan, or the table may mix two processes
    again = stat(root.pid)
    return found if again is not None and again.starttime == root.starttime else []


def same_process(recorded: ProcStat) -> bool:
    """True if the pid still names the process recorded (not exited, pid not reused)."""
    current = stat(recorded.pid)
    return current is not None and current.starttime == recorded.starttime
