"""What a worker does with a SIGTERM it holds (pure: no file, no clock).

On HUP gunicorn forks the new workers and SIGTERMs the old ones at once, before the new ones
have imported the app. A worker of ours does not act on a SIGTERM in the handler: it holds it,
and its loop asks :func:`on_held_term` whether to drain now, keep serving while the newer
generation starts, or forget the SIGTERM because that generation was rolled back.
"""

from __future__ import annotations

from collections.abc import Mapping

from grace_plugins.gunicorn.verdicts import PROMOTED, ROLLED_BACK

DRAIN = "drain"
WAIT = "wait"
FORGET = "forget"

#: A SIGTERM that reaches a worker this long after the newest generation was rolled back is a
#: real stop, not the reload's (the master may send the reload's SIGTERM a little after the
#: verdict: it read the workers' ages just before). A stop of the master itself is known
#: without this guess (the master records it).
TERM_SLACK = 0.5
#: While it holds the reload's SIGTERM, a worker checks this often whether the generation it
#: waits for has a verdict (one ``stat``; the full look stays at its pace): until it sees the
#: newer generation promoted it still accepts, and wins most new connections from the new
#: workers (looking every 0.1 s, old code answered about 50 ms longer after each promotion).
HELD_LOOK = 0.01
#: ... for this long after the SIGTERM (most reloads are decided well within it).
HELD_LOOK_FOR = 5.0


def look_interval(term_held_for: float | None, poll: float) -> float:
    """How long a worker's loop waits for events before it checks the verdicts: *poll*, or
    :data:`HELD_LOOK` for the first :data:`HELD_LOOK_FOR` seconds it holds a SIGTERM
    (*term_held_for*: for how long, None if it holds none)."""
    if term_held_for is not None and term_held_for < HELD_LOOK_FOR:
        return HELD_LOOK
    return poll


def on_held_term(
    own: int,
    later: Mapping[int, str],
    *,
    master_stopping: bool,
    last_term: float,
    rolled_back_at: float | None,
) -> tuple[str, str]:
    """``(DRAIN, why)``, ``(WAIT, "")`` or ``(FORGET, "")`` for a worker of generation *own*
    that holds a SIGTERM. *later*: the verdict (its kind) on every generation after *own* (the
    newest is the highest); *last_term*: when the worker got its last SIGTERM and
    *rolled_back_at*: when the newest was rolled back, if it was (both wall clock). In order:

    * no newer generation: the SIGTERM is a stop;
    * the master is stopping: drain;
    * the newest, or any generation between *own* and the newest, was promoted: drain (this
      code is replaced, whatever becomes of the newest);
    * the newest was rolled back: forget the reload's SIGTERM, unless it came after the
      verdict (then it is a real stop);
    * else the newest is still starting: wait.
    """
    newest = max(later, default=own)
    if newest <= own:
        return DRAIN, "SIGTERM"
    if master_stopping:
        return DRAIN, "SIGTERM (the master is stopping)"
    promoted = [gen for gen, kind in later.items() if gen > own and kind == PROMOTED]
    if promoted:
        return DRAIN, f"generation {max(promoted)} is ready"
    if later[newest] == ROLLED_BACK:
        if last_term > (rolled_back_at or 0.0) + TERM_SLACK:
            return DRAIN, "SIGTERM"
        return FORGET, ""
    return WAIT, ""
