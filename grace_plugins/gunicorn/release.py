"""A process that imports the app stays in the release it started in.

Gunicorn puts ``--chdir`` (by default ``$PWD``, symlinks kept) first on ``sys.path`` and enters
it again at each reload: a deploy that points a ``current`` symlink at a new release and sends
HUP gets new workers in the new release. The old workers keep the same text on their
``sys.path``, though, so what they would import after the switch, while they serve or drain,
would come from the new release, beside the old code they run. So, before the import, a process
that imports the app (a worker, a mold) spells those entries as they lead at that moment.
"""

from __future__ import annotations

import os
import sys

from grace_plugins.cmdline import respelt


def stay_in_this_release(chdir: str) -> None:
    """Spell the ``sys.path`` entries in *chdir* (gunicorn's ``--chdir``) as it leads now."""
    here = os.path.realpath(chdir)
    if here != chdir:
        sys.path[:] = [respelt(entry, chdir, here) for entry in sys.path]
