"""The warm spawner's templates (:mod:`.warm`): the one that forks, the one importing to
replace it, and those on their way out.

At most one template is *ready* (it forks generations) and one is *building* (it imports a
module report and becomes the ready one once its verdict says it can fork). A ready template
asked to cover more modules imports them itself (:meth:`Templates.grow`), so that the
generations it forked keep sharing its pages; a template is built anew only when there is no
ready one (at the start, or after one was dropped). A template replaced while it owes the
spawner a fork answer keeps its socket until it answered: the spawner names that one (*owing*)
wherever it matters. Starting a template, reading its verdict and asking it to stop never
block.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable

from grace_plugins import warm_seed
from grace_plugins.cmdline import Program, same_interpreter
from grace_plugins.process import AddSource, Outcome
from grace_plugins.template_process import LEAVE_SECONDS, Leaving, TemplateProcess, start_template

#: What reads a template's socket once it is a source of the loop.
Reader = Callable[[TemplateProcess], list[Outcome]]
#: The command line, environment and working directory of the generations a template forks.
ProgramRun = tuple[list[str], dict[str, str], str]


@dataclasses.dataclass(frozen=True)
class Verdict:
    """A building template's answer to its preload: ready to fork, or why it is unusable."""

    unusable: str | None


class Templates:
    """The ready template, the building one, and those leaving (see the module doc)."""

    def __init__(self, log: logging.Logger) -> None:
        self.log = log
        self.ready: TemplateProcess | None = None
        self.building: TemplateProcess | None = None
        #: why no template forks (a cold start's log line says it), or ``None``
        self.unusable: str | None = None
        #: module names the last template covered (ok or unusable): no rebuild for those
        self.basis: frozenset[str] | None = None
        self.leaving = Leaving()
        #: what the generations of the last template built run (its seed's key)
        self._run: ProgramRun | None = None
        self._add: AddSource = lambda fileobj, reader: None
        self._remove: Callable[[object], None] = lambda fileobj: None

    def attach(self, add: AddSource, remove: Callable[[object], None]) -> None:
        self._add, self._remove = add, remove

    def current(self, owing: TemplateProcess | None) -> list[TemplateProcess]:
        """The templates not asked to stop yet: ready, building, and *owing* if it was
        replaced."""
        found = [t for t in (self.ready, self.building) if t is not None]
        if owing is not None and owing not in found:
            found.append(owing)
        return found

    def pids(self, owing: TemplateProcess | None) -> set[int]:
        return {t.pid for t in self.current(owing)} | self.leaving.pids()

    def covers(self, names: frozenset[str]) -> bool:
        """True when the last template build attempted accounts for every module in
        *names* (preloaded, left out, or the project's): no new build for them."""
        return self.basis is not None and names <= self.basis

    def build(
        self,
        parsed: Program | None,
        run: ProgramRun,
        names: frozenset[str],
        report: str,
        on_verdict: Reader,
    ) -> None:
        """Start a template preloading *report* for generations that *run* a program
        (*parsed*: its command line split by :func:`~.cmdline.parse_program`), replacing one
        still building; the ready one forks until the new one is ready. *on_verdict* reads
        its socket until then. Once ready, it keeps the seed of *run* (:mod:`.warm_seed`)."""
        argv, env, cwd = run
        self._run = run
        self.stop(self.building)
        self.building = None
        self.basis = names
        if parsed is None or not same_interpreter(argv[0]):
            self.unusable = "the command line cannot be re-run in-process (python -c?)"
            return
        seed = None  # the program's seed: what its last template left out is not tried again
        with contextlib.suppress(Exception):  # as warm_seed.find: no seed is no loss
            seed = warm_seed.seed_path(argv, cwd, env)
        try:
            b = self.building = start_template(parsed, argv, env, cwd, report, seed)
        except OSError as exc:
            self.unusable = f"the template could not start ({exc})"
            return
        self._add(b.wire.sock, lambda: on_verdict(b))

    def read_verdict(
        self, b: TemplateProcess, owing: TemplateProcess | None, on_answer: Reader
    ) -> Verdict | None:
        """Read building template *b*'s verdict: ready, it replaces the ready one (stopped
        now unless it is *owing*; then once it answered) and *on_answer* reads its socket
        from now on. ``None`` while no whole verdict came, or when *b* was replaced."""
        if b is not self.building:
            return None
        try:
            unusable = b.verdict()
        except TimeoutError:
            return None  # not a whole line yet
        self.building = None
        if unusable is not None:
            self.stop(b)
            if self.ready is None:
                self.unusable = f"the template is unusable: {unusable}"
            return Verdict(self.unusable or unusable)
        self.basis = (self.basis or frozenset()) | b.known
        old, self.ready, self.unusable = self.ready, b, None
        if old is not owing:
            self.stop(old)
        self._remove(b.wire.sock)
        self._add(b.wire.sock, lambda: on_answer(b))
        elapsed = (time.monotonic() - b.started) * 1000
        self.log.info(
            "warm start: template (pid %d) ready after %d ms with %d modules preloaded",
            b.pid,
            elapsed,
            b.preloaded,
        )
        b.ready_ms = round(elapsed)
        self._keep_seed(b)
        return Verdict(None)

    def absent(self) -> str:
        """Why no template can fork now (none is ready)."""
        if self.building is not None:
            return "the template is still importing"
        return self.unusable or "no template yet (built once a generation reports)"

    def grow(self, names: frozenset[str], report: str) -> bool:
        """Ask the ready template to import, in place, what module *report* names beyond its
        preload (:meth:`.template.Template.grow`): the generations it forked keep sharing its
        pages, which a new template would not. Its answer comes among its fork answers
        (:meth:`grown`). False when there is no ready template to ask."""
        t = self.ready
        if t is None:
            return False
        try:
            t.wire.send({"grow": report})
        except OSError:
            return False
        self.stop(self.building)
        self.building = None
        self.basis = (self.basis or frozenset()) | names
        t.report = report
        return True

    def grown(self, t: TemplateProcess, answer: dict) -> str | None:
        """Template *t* answered a :meth:`grow`: ``None`` when it forks on, now with more
        modules, else why it cannot (it leaves by itself)."""
        unusable = t.absorb(answer)
        if unusable is not None:
            return f"the template could not grow: {unusable}"
        t.ready_ms += int(answer.get("ms", 0))
        self.basis = (self.basis or frozenset()) | t.known
        added = len(answer.get("added", []))
        self.log.log(
            logging.INFO if added else logging.DEBUG,
            "warm start: template (pid %d) grew by %d modules in %d ms",
            t.pid,
            added,
            int(answer.get("ms", 0)),
        )
        self._keep_seed(t)
        return None

    def _keep_seed(self, t: TemplateProcess) -> None:
        """Keep the report *t* was built (or grown) from as its program's seed."""
        assert self._run is not None  # set by build, before any template was building
        argv, env, cwd = self._run
        warm_seed.keep(t.report, argv, cwd, env, t.ready_ms, t.left, t.tried)

    def discard(
        self, t: TemplateProcess, why: str, at_once: bool = False, said: bool = False
    ) -> bool:
        """Template *t* is gone or broken: stop it (*at_once*: killed now, not given time to
        leave) and forget it (a ready one is built again from the next module report).
        *said*: the caller tells why (a generation starting cold now). Returns True when *t*
        was the one building."""
        self.stop(t, at_once)
        if t is self.ready:
            if not said:
                self.log.info("warm start: %s; the next generation starts cold", why)
            self.ready = None
            self.unusable = why
            self.basis = None
        if t is not self.building:
            return False
        self.building = None
        return True

    def stop(self, t: TemplateProcess | None, at_once: bool = False) -> None:
        """Stop template *t* (if any), no longer a source of the loop; it leaves by itself
        or is killed at its time, now if *at_once* (:class:`~.template_process.Leaving`).
        Does not block."""
        if t is not None and t.leave_by is None:
            self._remove(t.wire.sock)
            self.leaving.add(t, 0.0 if at_once else LEAVE_SECONDS)

    def stop_all(self, reason: str | None, owing: TemplateProcess | None) -> None:
        """Stop every template, *owing* included; *reason* is why later generations start
        cold (``None``: the next module report builds another)."""
        for t in self.current(owing):
            self.stop(t)
        self.ready = None
        self.building = None
        self.unusable = reason
