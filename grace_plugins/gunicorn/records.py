"""The record directory that a gunicorn master and its workers share (file operations only).

Gunicorn's master has no notion of "the new workers are ready", so the workers coordinate
through a private directory (``mkdtemp``: mode 0700) that they inherit by fork. When the
workers run as another user (gunicorn's ``--user``/``--group``), the master hands the directory
and the files it writes there to that user, as gunicorn does with each worker's heartbeat file:
it stays private to the two of them, never group- or world-writable. Every file is written
whole (:func:`grace_plugins.atomic.write_atomic`), and most of a record is its name:

* ``gen-G.json`` -- the master's announcement of generation *G*, written before its first
  fork (see :class:`~grace_plugins.gunicorn.verdicts.Announcement`);
* ``w-G-AGE-PID.STATE`` -- a worker's own progress: ``boot``, ``ready``, ``failed`` (the
  reason inside);
* ``verdict-G`` -- the verdict on *G*, written once (the first writer wins);
* ``watch-G-PID`` -- with ``--reload``, what worker *PID* of *G* loaded (or tried to load),
  for the master's file watcher (an encoded :class:`~grace_plugins.watchspec.WatchSpec`);
* ``ever-ready``, ``backoff``, ``replacing``, ``claim-WHAT-G``, ``master-stopping`` -- shared
  notes.

What the records mean is decided elsewhere (:mod:`grace_plugins.gunicorn.verdicts`, pure).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable
from dataclasses import asdict

from grace_plugins.atomic import write_atomic
from grace_plugins.gunicorn.verdicts import (
    PROMOTED,
    Announcement,
    GenerationRecords,
    Member,
    Verdict,
    members,
)

#: Records of generations this much older than the newest are pruned.
KEEP_GENERATIONS = 4
#: A worker's states (the suffix of its record); ``stopped``: it no longer accepts (it drains).
BOOT, READY, FAILED, STOPPED = "boot", "ready", "failed", "stopped"
_SETTLED = {READY, FAILED}

_WORKER = re.compile(r"^w-(\d+)-(\d+)-(\d+)\.(\w+)$")
_ANNOUNCEMENT = re.compile(r"^gen-(\d+)\.json$")
_PER_GENERATION = re.compile(r"^(?:w|gen|verdict|watch|claim-\w+)-(\d+)")
_SPEC = re.compile(r"^watch-(\d+)-(\w+)$")
_MASTER_STOPPING = "master-stopping"
_REPLACING = "replacing"  # the worker whose max_requests started a replacement not ready yet
_BACKOFF = "backoff"  # failed respawns in a row


class RecordStore:
    """The shared record directory; every method is a few file operations and never raises
    (a write that fails returns False)."""

    def __init__(self, path: str, owner: tuple[int, int] | None = None) -> None:
        self.path = path
        #: (uid, gid) of the workers when they are not the master's: files the master writes
        #: are handed to them
        self.owner = owner

    @classmethod
    def create(cls, owner: tuple[int, int] | None = None, parent: str | None = None) -> RecordStore:
        """Make a fresh private directory (0700) in *parent* (the temporary directory by
        default), handed to *owner* (uid, gid) if given.

        :raises OSError: when it cannot be created or handed over.
        """
        path = tempfile.mkdtemp(prefix="grace-gunicorn-", dir=parent)
        try:
            if owner is not None:
                os.chown(path, *owner)
        except OSError:
            shutil.rmtree(path, ignore_errors=True)
            raise
        return cls(path, owner)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    # -- files ----------------------------------------------------------------------------------
    def _write(self, name: str, text: str = "", *, exclusive: bool = False) -> bool:
        try:
            write_atomic(os.path.join(self.path, name), text, exclusive=exclusive)
        except OSError:
            return False
        return True

    def _write_for_workers(self, name: str, text: str, *, exclusive: bool = False) -> bool:
        """Write *name* (from the master) so that the workers can read it: under a name no
        reader looks at, handed to the workers' user, then renamed (or, *exclusive*, linked:
        the first writer wins) into place."""
        if self.owner is None:
            return self._write(name, text, exclusive=exclusive)
        staging = os.path.join(self.path, f".{name}.staging")
        final = os.path.join(self.path, name)
        try:
            write_atomic(staging, text)
            os.chown(staging, *self.owner)
            if exclusive:
                os.link(staging, final)
            else:
                os.replace(staging, final)
        except OSError:
            return False
        finally:
            with contextlib.suppress(OSError):
                os.unlink(staging)
        return True

    def _read(self, name: str) -> str | None:
        try:
            with open(os.path.join(self.path, name)) as handle:
                return handle.read()
        except OSError:
            return None

    def _exists(self, name: str) -> bool:
        return os.path.lexists(os.path.join(self.path, name))

    def _mtime(self, name: str) -> float | None:
        try:
            return os.stat(os.path.join(self.path, name)).st_mtime
        except OSError:
            return None

    def _names(self) -> list[str]:
        try:
            return os.listdir(self.path)
        except OSError:
            return []

    # -- generations (written by the master) ------------------------------------------------------
    def announce(self, gen: int, info: Announcement) -> bool:
        """Announce generation *gen* (before its first fork); prune old records."""
        written = self._write_for_workers(f"gen-{gen}.json", json.dumps(asdict(info)))
        for name in self._names():
            found = _PER_GENERATION.match(name)
            if found and int(found.group(1)) < gen - KEEP_GENERATIONS:
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(self.path, name))
        return written

    def announcement(self, gen: int) -> Announcement | None:
        try:
            return Announcement(**json.loads(self._read(f"gen-{gen}.json") or ""))
        except (ValueError, TypeError):
            return None

    def newest_generation(self) -> int:
        found = [int(m.group(1)) for m in map(_ANNOUNCEMENT.match, self._names()) if m]
        return max(found, default=0)

    def mark_master_stopping(self) -> None:
        """The master received a stop signal (recorded before it SIGTERMs its workers)."""
        self._write(_MASTER_STOPPING)

    def master_stopping(self) -> bool:
        return self._exists(_MASTER_STOPPING)

    # -- workers ----------------------------------------------------------------------------------
    def record(self, member: Member, state: str, detail: str = "") -> bool:
        """Record a worker's progress; a ``READY`` also notes that something serves."""
        written = self._write(f"w-{member.gen}-{member.age}-{member.pid}.{state}", detail)
        if state == READY:
            written = self._write("ever-ready") and written
            for note in (_BACKOFF, _REPLACING):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(self.path, note))
        return written

    def forget(self, member: Member, states: Iterable[str]) -> None:
        """Remove the records of a worker that is gone (see ``verdicts.gone_respawns``)."""
        for state in states:
            with contextlib.suppress(OSError):
                os.unlink(
                    os.path.join(self.path, f"w-{member.gen}-{member.age}-{member.pid}.{state}")
                )

    def workers(self, gen: int) -> dict[Member, dict[str, str]]:
        """Every worker of *gen* that left a record, with its states (a failure's reason)."""
        found: dict[Member, dict[str, str]] = {}
        for name in self._names():
            match = _WORKER.match(name)
            if match and int(match.group(1)) == gen:
                member = Member(gen, int(match.group(2)), int(match.group(3)))
                detail = self._read(name) if match.group(4) == FAILED else ""
                found.setdefault(member, {})[match.group(4)] = detail or ""
        return found

    def members(self, gen: int) -> list[Member]:
        return members(self.announcement(gen), self.workers(gen))

    def ever_ready(self) -> bool:
        """Whether any worker of this master ever became ready (else nothing is serving)."""
        return self._exists("ever-ready")

    def loading(self, within: float) -> list[int]:
        """The pids of the workers that recorded their boot in the last *within* seconds (the
        ready timeout: a boot record older than that is a worker killed while it loaded) and
        neither ready nor failed yet (alive or not: the caller knows which processes are)."""
        states: dict[int, set[str]] = {}
        booted: dict[int, str] = {}
        for name in self._names():
            match = _WORKER.match(name)
            if match:
                states.setdefault(int(match.group(3)), set()).add(match.group(4))
                if match.group(4) == BOOT:
                    booted[int(match.group(3))] = name
        since = time.time() - within
        fresh = {pid for pid, name in booted.items() if (self._mtime(name) or 0.0) >= since}
        return [pid for pid in fresh if not states[pid] & _SETTLED]

    def claim_replacement(self, pid: int, stale_after: float) -> int:
        """Claim the one replacement at a time ``max_requests`` may start: 0 if worker *pid* may
        go (it has the claim, or none can be written here), else who has it. A worker becoming
        ready ends it; a claim older than *stale_after* s (no one became ready) is taken over."""
        if self._write(_REPLACING, str(pid), exclusive=True):
            return 0
        text = self._read(_REPLACING) or ""
        if not text.isdigit() or int(text) == pid:
            return 0  # none there (the write failed: a full or unwritable directory), or its own
        if time.time() - (self._mtime(_REPLACING) or 0.0) > stale_after:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self.path, _REPLACING))
            if self._write(_REPLACING, str(pid), exclusive=True) or not self._exists(_REPLACING):
                return 0
        return int(text)

    def failed_respawns(self) -> int:
        """Respawns that failed to load the code on disk since a worker last became ready."""
        with contextlib.suppress(ValueError):
            return int((self._read(_BACKOFF) or "0").strip() or 0)
        return 0

    def bump_backoff(self) -> int:
        """Count one more failed respawn in a row; return the new count."""
        count = self.failed_respawns() + 1
        self._write(_BACKOFF, str(count))
        return count

    def claim(self, what: str, gen: int) -> bool:
        """True for the first caller only (e.g. who logs a generation's traceback)."""
        return self._write(f"claim-{what}-{gen}", exclusive=True)

    # -- what the generations loaded (--reload) ---------------------------------------------------
    def record_spec(self, gen: int, who: int | str, encoded: str) -> bool:
        """Record what *who* (a worker's pid) of *gen* loaded: one encoded watch spec."""
        return self._write(f"watch-{gen}-{who}", encoded)

    def spec_stamps(self) -> dict[str, tuple[int, float]]:
        """{record name: (generation, mtime)} of every watch spec recorded."""
        found = {}
        for name in self._names():
            match = _SPEC.match(name)
            mtime = self._mtime(name) if match else None
            if match and mtime is not None:
                found[name] = (int(match.group(1)), mtime)
        return found

    def read_spec(self, name: str) -> str | None:
        return self._read(name)

    # -- verdicts ---------------------------------------------------------------------------------
    def generation(self, gen: int) -> GenerationRecords:
        """What the records say about *gen* (reads only)."""
        return GenerationRecords(
            self.announcement(gen),
            self.workers(gen),
            self.recorded_verdict(gen),
            self.master_stopping(),
        )

    def recorded_verdict(self, gen: int) -> str | None:
        """The verdict recorded for *gen*, as written (see :meth:`Verdict.as_recorded`)."""
        return self._read(f"verdict-{gen}")

    def newest_promoted(self) -> int:
        """The newest generation promoted among those whose records are kept (0 if none): the
        code being served."""
        newest = self.newest_generation()
        for gen in range(newest, max(0, newest - KEEP_GENERATIONS - 1), -1):
            if self.recorded_verdict(gen) == PROMOTED:
                return gen
        return 0

    def has_verdict(self, gen: int) -> bool:
        return self._exists(f"verdict-{gen}")

    def verdict_time(self, gen: int) -> float | None:
        """When the verdict on *gen* was recorded (wall clock, like ``time.time()``)."""
        return self._mtime(f"verdict-{gen}")

    def record_verdict(self, gen: int, verdict: Verdict, *, by_master: bool = False) -> bool:
        """Record a new verdict on *gen*, once: True for the one caller that recorded it. The
        master (*by_master*: a mold failed, no worker was forked) hands it to the workers."""
        if by_master:
            return self._write_for_workers(f"verdict-{gen}", verdict.as_recorded(), exclusive=True)
        return self._write(f"verdict-{gen}", verdict.as_recorded(), exclusive=True)


def verdict_kind(store: RecordStore | None, gen: int) -> str | None:
    """The kind of the verdict recorded on *gen* (``None`` while it starts)."""
    text = store.recorded_verdict(gen) if store is not None else None
    return None if text is None else Verdict.from_recorded(text).kind
