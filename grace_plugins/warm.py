"""Warm start, the supervisor's side: a spawner that forks generations from a template.

:class:`WarmSpawner` is a :class:`~grace_plugins.process.Spawner`: the supervisor's loop does
not know whether a generation was forked warm or started cold. Nothing here blocks the loop:

* when a generation becomes current (``refresh``), its module report is read and, if it names
  a module the template does not cover, the ready template imports those too, in place (the
  generations it forked keep sharing its pages), or, without one, a new template
  (:mod:`grace_plugins.template`) starts importing; its socket is a source of the loop, and
  its answer (ready, or unusable) is read when it comes; the old template forks until the new
  one is ready (the templates' own bookkeeping is :mod:`grace_plugins.warm_templates`);
* a spawn checks the template (there, same command line, every preloaded file unchanged on
  disk: a changed file discards it, names the module in the log, and that generation starts
  cold), sends the fork request and returns; the template's answer (the generation's pid)
  arrives on its socket and becomes the spawn's outcome;
* whatever goes wrong (no template, a refusal, no answer within :data:`FORK_TIMEOUT`, a
  template that died) is a cold start with one log line, never a failed or hung spawn.

The supervisor imports nothing of the preload set: only the template does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
import sys
import time
from collections.abc import Callable

from grace_plugins import actions as act
from grace_plugins import first_wait, warm_seed
from grace_plugins.cmdline import parse_program
from grace_plugins.log import get_logger
from grace_plugins.process import (
    AddSource,
    ChildProcess,
    Outcome,
    Spawner,
    SpawnRequest,
    StartAgainCold,
    Started,
    become_subreaper,
)
from grace_plugins.template_process import ReportFile, TemplateProcess
from grace_plugins.warm_templates import ProgramRun, Templates

#: Seconds a fork request may wait for the template's answer before the generation starts cold.
FORK_TIMEOUT = 5.0


class _Cold(Exception):
    """Why this generation starts cold (one log line)."""


def unsupported() -> str | None:
    """Why warm start cannot work here, or ``None`` (Linux: fork, SCM_RIGHTS, a subreaper)."""
    if not sys.platform.startswith("linux"):
        return f"warm start needs Linux (this is {sys.platform})"
    if not hasattr(os, "fork") or not hasattr(socket, "send_fds"):
        return "warm start needs fork and SCM_RIGHTS"
    if not become_subreaper():
        return "warm start needs prctl(PR_SET_CHILD_SUBREAPER)"
    return None


@dataclasses.dataclass
class _Fork:
    """A fork request sent to *template*, awaiting its answer."""

    request: SpawnRequest
    template: TemplateProcess
    sent: float
    deadline: float


class WarmSpawner(Spawner):
    """Forks generations from a warm template when it can, starts them cold otherwise."""

    def __init__(
        self,
        log: logging.Logger | None = None,
        argv_len: int | None = None,
        cold: Spawner | None = None,
        max_wait: float = 10.0,
    ) -> None:
        self.log = log or get_logger()
        self.cold = cold or Spawner()  # what starts a generation when no fork will do
        self.argv_len = len(sys.argv) if argv_len is None else argv_len
        self.reports = ReportFile(os.getpid())
        self.templates = Templates(self.log)
        self._fork: _Fork | None = None
        self._waiting: first_wait.FirstWait | None = None  # the first generation, held (below)
        self.max_wait = max_wait  # its longest hold: a third of the ready timeout at most
        self._program: ProgramRun | None = None
        self._spawns, self._seeded_first = 0, False

    # -- the Spawner interface --------------------------------------------------------------
    def attach(self, add: AddSource, remove: Callable[[object], None]) -> None:
        self.templates.attach(add, remove)

    def spawn(self, request: SpawnRequest) -> Started | None:
        """Send a fork request to the template (the outcome comes on its socket), or start
        cold now (see the module's docstring). Raises ``OSError`` as a cold start does."""
        self._spawns += 1
        self._program = (request.argv, request.env, request.cwd)
        try:
            if request.cold:
                raise _Cold("")
            if self._spawns == 1 and self._seeded(request):
                return None
            self._send_fork(request)
        except _Cold as why:
            self._say_cold(str(why))
            return self.cold.spawn(request)
        return None

    def pids(self) -> set[int]:
        return self.templates.pids(self._owing())

    def reap(self) -> list[Outcome]:
        """After a SIGCHLD: first the answers a template already sent (so a generation it
        forked is known before orphans are reaped), then the templates that exited."""
        out: list[Outcome] = []
        if self._fork is not None:
            out += self._answers(self._fork.template)
        for t in self.templates.current(self._owing()):
            if t.process.poll() is not None:
                out += self._lost(t, f"the template (pid {t.pid}) exited")
        self.templates.leaving.reap()
        return out

    def deadline(self) -> float | None:
        moments = [self.templates.leaving.deadline(), self._fork.deadline if self._fork else None]
        moments.append(self._waiting.deadline if self._waiting else None)
        return min((m for m in moments if m is not None), default=None)

    def expire(self, now: float) -> list[Outcome]:
        self.templates.leaving.expire(now)
        held, building = self._waiting, self.templates.building
        cpu = first_wait.cpu_seconds(building.pid) if held and building else None
        if held is not None and now >= held.deadline and not held.goes_on(now, cpu):
            return self._unwait("the template of the last run's modules is not ready yet")
        fork = self._fork
        if fork is None or now < fork.deadline:
            return []
        return self._lost(fork.template, f"the template did not fork within {FORK_TIMEOUT:g} s")

    def refresh(self) -> None:
        """A generation became current: build a template if its report names new modules."""
        with contextlib.suppress(Exception):  # warm start must never break the loop
            names = self.reports.new_names()
            if names is None or self._program is None or self.templates.covers(names):
                return
            if not self.templates.grow(names, self.reports.path):
                self._build(names)

    def cancel(self, number: int) -> None:
        if self._waiting is not None and self._waiting.request.number == number:
            self._waiting = None  # its template keeps importing: it serves the next spawn
        if self._fork is not None and self._fork.request.number == number:
            self._fork.template.stale_answers += 1  # its answer is not the next request's
            self._fork = None

    def drop(self, why: str) -> None:
        self._stop_all(why)
        self.templates.basis = None  # the next report rebuilds it

    def close(self) -> None:
        """Stop the templates and withdraw the report request. Blocks up to a few seconds."""
        self._stop_all(None)
        self.templates.leaving.close()
        self.reports.close()

    # -- one warm spawn ---------------------------------------------------------------------
    def _send_fork(self, request: SpawnRequest) -> None:
        t = self.templates.ready
        if t is None:
            raise _Cold(self.templates.absent())
        if request.argv != t.argv:
            self._stop_all(None)
            raise _Cold("the command line changed")
        stale = t.why_stale(request.cwd)
        if stale:
            self.drop("the template was stale")
            raise _Cold(f"{stale}; the template will be rebuilt")
        try:
            t.ask_fork(request.argv, request.env, request.cwd, request.pass_fds)
        except OSError as exc:
            self.drop("the template is gone")
            raise _Cold(f"the template is gone ({exc})") from None
        now = time.monotonic()
        self._fork = _Fork(request, t, now, now + FORK_TIMEOUT)

    def _owing(self) -> TemplateProcess | None:
        """The template whose fork answer is awaited, if any."""
        return None if self._fork is None else self._fork.template

    def _answers(self, t: TemplateProcess) -> list[Outcome]:
        """Read what template *t* said (never blocks): the answer to the awaited fork, or end
        of file. A template replaced while it owed an answer is stopped once it answered."""
        out: list[Outcome] = []
        while True:
            try:
                got = t.wire.receive(0.0)
            except TimeoutError:
                break
            except (OSError, ValueError) as exc:
                return out + self._lost(t, f"the template's socket failed ({exc})")
            if got is None:
                return out + self._lost(t, "the template exited")
            if "grown" in got[0]:
                why = self.templates.grown(t, got[0]["grown"])
                if why is None:
                    continue
                out += self._lost(t, why)
                self.reports.read_again()
                self.refresh()  # a new template, of the modules it could not grow by
                return out
            if t.stale_answers:  # that fork's channel is closed: the process leaves by itself
                t.stale_answers -= 1
                continue
            fork = self._fork
            if fork is None or fork.template is not t:
                continue
            self._fork = None
            out.append(self._forked(fork, got[0]))
        if t is not self.templates.ready and self._owing() is not t:
            self.templates.stop(t)  # replaced while it owed an answer: done now
        return out

    def _forked(self, fork: _Fork, answer: dict) -> Outcome:
        if "pid" not in answer:
            self.drop(str(answer.get("error")))
            return self._cold(fork.request, f"the template refused to fork: {answer.get('error')}")
        pid = int(answer["pid"])
        elapsed = (time.monotonic() - fork.sent) * 1000
        self.log.info("warm start: pid %d forked from the template in %d ms", pid, elapsed)
        return Started(fork.request.number, ChildProcess(pid), warm=True)

    def _lost(self, t: TemplateProcess, why: str) -> list[Outcome]:
        """Template *t* is gone or broken: discard it (the next report builds another); a
        held first generation or a fork awaited from it starts cold."""
        fork = self._fork if self._fork is not None and self._fork.template is t else None
        was_building = self.templates.discard(t, why, said=fork is not None)
        if was_building and self._waiting is not None:
            return self._unwait(f"{why} before it was ready")
        if fork is None:
            return []
        self._fork = None
        self._say_cold(why)  # it may still fork that request: a new channel for the cold one
        return [StartAgainCold(fork.request.number)]

    def _seeded(self, request: SpawnRequest) -> bool:
        """Build the template from the seed of *request*'s program (:mod:`.warm_seed`) and
        hold *request* until it is ready; False (nothing held) without a seed.

        :raises _Cold: the seed's template would be a poor bet (:func:`.preload.poor_bet`)."""
        found = warm_seed.find(request.argv, request.cwd, request.env)
        if found is not None and found.poor:
            # built from generation 1's report once it serves: its imports would slow it down
            self.log.info("warm start: %s; generation %d starts cold", found.poor, request.number)
            raise _Cold("")  # said
        if found is not None:
            self._build(frozenset(), found.path)
        if found is None or self.templates.building is None:
            return False
        pid = self.templates.building.pid
        self._waiting = first_wait.hold(request, found.wait, self.max_wait, pid, self.log)
        self._seeded_first = True
        return True

    def _unwait(self, why: str) -> list[Outcome]:
        """The held first generation starts cold now, saying *why*."""
        assert self._waiting is not None
        request, self._waiting = self._waiting.request, None
        self.log.info("warm start: %s; generation %d starts cold", why, request.number)
        return [self._cold(request, "")]

    def _say_cold(self, why: str) -> None:
        if why and (self._spawns > 1 or self._seeded_first):
            self.log.info("warm start: %s; this generation starts cold", why)

    def _cold(self, request: SpawnRequest, why: str) -> Outcome:
        """Start *request* cold now, after a warm attempt failed (for a later outcome)."""
        self._say_cold(why)
        try:
            started = self.cold.spawn(request)
        except OSError as exc:
            return act.SpawnFailed(time.monotonic(), request.number, str(exc))
        assert started is not None
        return started

    # -- the template's life ----------------------------------------------------------------
    def _build(self, names: frozenset[str], report: str | None = None) -> None:
        """Start a new template preloading *report* (by default the generations')."""
        assert self._program is not None
        program = parse_program(self._program[0], self.argv_len)
        report = report or self.reports.path
        self.templates.build(program, self._program, names, report, self._verdict)

    def _verdict(self, b: TemplateProcess) -> list[Outcome]:
        """The building template answered its preload (or died): once ready, it forks the
        held first generation, if any; unusable, that generation starts cold."""
        verdict = self.templates.read_verdict(b, self._owing(), self._answers)
        if verdict is None and b.poor and b is self.templates.building and self._waiting:
            # its imports would slow the cold start down: built again once that one serves
            self.templates.discard(b, b.poor, at_once=True)
            self.templates.basis = None
            return self._unwait(f"the template is a poor bet for it ({b.poor})")
        if verdict is None or self._waiting is None:
            return []
        if verdict.unusable is not None:
            return self._unwait(verdict.unusable)
        try:  # the held first generation is forked now (its outcome comes later)
            self._send_fork(self._waiting.request)
        except _Cold as why:
            return self._unwait(str(why))
        self._waiting = None
        return []

    def _stop_all(self, reason: str | None) -> None:
        """Stop the templates; *reason* is why later generations start cold. (Called when no
        fork is awaited: before a spawn, after a generation became current, at the end.)"""
        self.templates.stop_all(reason, self._owing())
        self._fork = None
