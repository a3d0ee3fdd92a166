"""Whether a worker that reached ``max_requests`` may exit to be replaced (pure).

Gunicorn's master replaces it with a fresh worker, which imports the code on disk. While the
worker's generation is the newest, that is its own code (or one the next HUP brings anyway).
Once a newer generation was rolled back, it is the broken code: every replacement would fail
(and back off), and once ``max_requests`` had replaced every worker, nothing would serve. The
same once replacements failed to load it (it broke on disk without a HUP). While a newer
generation starts, it is code that no verdict has passed yet (and the worker drains anyway if
that generation is promoted). While another worker loads it (a replacement), nobody knows yet
whether it loads: one replacement at a time, so that broken code on disk costs one worker, not
every worker that reached ``max_requests`` during the import (the worker that goes claims the
replacement in the records, until a worker becomes ready). A worker forked from a mold
(``--preload``) is replaced from the serving generation's mold, whatever newer generation
failed or starts; but if that mold and its spare are gone, replacements import the code on
disk, so the other rules still hold for it.
"""

from __future__ import annotations

from collections.abc import Sequence

from grace_plugins.gunicorn.verdicts import PROMOTED, ROLLED_BACK


def why_serve_on(
    own: int,
    newest: int,
    newest_kind: str | None,
    failed_respawns: int,
    loading: Sequence[int],
    *,
    from_a_mold: bool,
) -> str:
    """Why a worker of generation *own* at ``max_requests`` serves on ("" if it may exit).
    *newest*: the newest generation the master started, *newest_kind*: its verdict's kind
    (None while it starts); *failed_respawns*: replacements that failed to load the code on
    disk since a worker last became ready; *loading*: the other workers loading it now;
    *from_a_mold*: forked from a mold (replaced from it while it lives)."""
    if failed_respawns:
        return "the code on disk does not load (a respawn failed to load it)"
    if newest > own and (newest_kind == PROMOTED or from_a_mold):
        return ""  # it drains anyway, or is replaced from its generation's mold
    if newest > own:
        verdict = "was rolled back" if newest_kind == ROLLED_BACK else "is starting"
        return f"generation {newest} {verdict}"
    if loading:
        return f"worker {min(loading)} is still loading it"
    return ""
