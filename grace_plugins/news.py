"""How the supervisor's decisions are told: the log lines, systemd's status and the state file's
records, as actions (pure functions; :mod:`grace_plugins.reporting` carries them out).

Kept apart from :mod:`grace_plugins.rules` so that the rules read as decisions, and so that the
wording users and scripts rely on (``grace-plugins reload``, the tests' readiness line) lives in
one place.
"""

from __future__ import annotations

from grace_plugins import actions as act
from grace_plugins.actions import Action
from grace_plugins.generations import Gen


def changed(paths: tuple[str, ...]) -> str:
    """Why an upgrade starts, when the file watcher heard a save."""
    more = len(paths) - 1
    return f"file changed: {paths[0]}" + (f" (and {more} more)" if more else "")


def queued(reason: str, pending: Gen | None, interval: float) -> list[Action]:
    """An upgrade trigger was coalesced into the one follow-up."""
    if pending is not None:
        state = f"{pending} is still starting"
    else:
        state = f"the last upgrade started less than {interval:g} s ago"
    return [act.info("upgrade (%s) queued: %s; one follow-up upgrade will run", reason, state)]


def started(gen: Gen, reason: str, upgrading: bool) -> list[Action]:
    """A generation's process exists: an upgrade started, or a (re)start."""
    if gen.cold_retry:
        return [act.info("%s started cold", gen)]
    if not upgrading:
        return [act.info("starting %s (%s)", gen, reason)]
    return [
        act.info("upgrade started (%s): %s", reason, gen),
        act.Notify("reloading", f"upgrading to generation {gen.number}"),
        act.Record({"in_progress": True}),
    ]


def ready(gen: Gen, old: Gen | None, elapsed_ms: float, listeners: str, pid: int) -> list[Action]:
    """*gen* serves, replacing *old* (``None`` at the first start)."""
    if old is None:
        line = act.info(
            "%s ready after %d ms; serving %s. Upgrade: kill -HUP %d. Stop: kill -TERM %d.",
            gen,
            elapsed_ms,
            listeners,
            pid,
            pid,
        )
    elif gen.saved_at is not None and gen.ready_at is not None:
        saved_ms = round((gen.ready_at - gen.saved_at) * 1000)
        heard_ms = saved_ms - round(elapsed_ms)
        ready_ms = round(elapsed_ms)
        line = act.info(
            "%s ready after %d ms; %s drains; the saved change is served %d ms after the save"
            " (%d ms to hear it, %d ms to start and be ready)",
            gen,
            ready_ms,
            old,
            saved_ms,
            heard_ms,
            ready_ms,
        )
    else:
        line = act.info("%s ready after %d ms; %s drains", gen, elapsed_ms, old)
    serving = act.Serving(
        f"serving with generation {gen.number} (pid {gen.pid})",
        outcome=None if old is None else "ok",
        detail=f"{gen} ready after {elapsed_ms:.0f} ms",
        fields={"ready_ms": round(elapsed_ms)},
        number=gen.number,
        pid=gen.pid,
    )
    return [line, serving]


def template_at_fault(gen: Gen) -> list[Action]:
    """*gen* failed forked warm and is ready started cold: the template is to blame."""
    why = f"generation {gen.number} failed when forked from it and is ready started cold"
    return [
        act.warning("warm start: the template was at fault (%s); it is rebuilt", why),
        act.DropTemplate(why),
    ]


def retrying_cold(gen: Gen, why: str) -> list[Action]:
    return [
        act.warning(
            "%s, forked warm, %s; starting it again cold (the warm-start template may be at fault)",
            gen,
            why,
        )
    ]


def rolled_back(gen: Gen, why: str, current: Gen) -> list[Action]:
    return [
        act.error(
            "upgrade rolled back: %s %s; %s keeps serving (its traceback, if any, is above)",
            gen,
            why,
            current,
        ),
        act.Serving(
            f"upgrade rolled back: generation {gen.number} {why}",
            outcome="rolled_back",
            detail=f"{gen} {why}",
        ),
    ]


def start_failed(gen: Gen, why: str) -> list[Action]:
    return [act.error("the app failed to start: %s %s", gen, why)]
