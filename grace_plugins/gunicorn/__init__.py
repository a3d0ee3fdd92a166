"""Gunicorn adapter: ``gunicorn -k grace_plugins.Worker app:app``.

Gunicorn keeps its own master (pid, listeners, signals); this worker class changes what a HUP
means from gunicorn's extension points: the old workers serve until the new ones are ready, and
broken code is rolled back instead of halting the master. How it works: docs/gunicorn.md.

Modules: ``worker`` (the ``-k`` class, which puts the parts together), ``boot`` (a new worker's
import), ``serve`` (gthread with a drain), ``watch`` (a worker's view of the verdicts),
``records`` (the record directory the master and its workers share), ``verdicts`` and
``held_term`` (the rules, pure), ``master`` (what runs in the master), ``notify`` (systemd),
``lookout`` (the master's thread: HUP pacing, ``--reload``), and with ``--preload`` ``molds``
(the master's side), ``mold``, ``mold_startup``, ``mold_worker``, ``mold_handle`` and
``mold_rules`` (pure): a mold per generation imports the app and forks its workers.
"""

from __future__ import annotations

from grace_plugins.gunicorn.boot import EXIT_NOT_LOADED
from grace_plugins.gunicorn.worker import Worker

__all__ = ["EXIT_NOT_LOADED", "Worker"]
