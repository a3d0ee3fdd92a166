"""Gunicorn adapter: ``gunicorn -k grace_plugins.Worker app:app``.

Gunicorn has its own master (the arbiter), so the core's supervisor is not used here: the
master keeps its pid, its listeners and its signals, and this worker class changes what a HUP
means from inside gunicorn's extension points -- no patched gunicorn, no hook replaced (user
hooks in ``gunicorn.conf.py`` run exactly as before).

What gunicorn does on HUP
    ``Arbiter.reload()`` builds a new ``Config``, forks the new workers and at once SIGTERMs the
    old ones, before the new ones have imported the app; a new worker whose app does not load
    exits 3/4 and ``reap_workers`` halts the master; gthread keeps a stopping worker's idle
    keep-alive connections for 2 s only.

What this worker does
    *Generations.* The worker class's constructor runs in the master before every fork; the
    first worker built from a new ``Config`` opens a new generation in a private record
    directory (``mkdtemp``, 0700, removed when the master exits; see
    :mod:`grace_plugins.gunicorn.gate`). Workers inherit it by fork and leave records there:
    boot, ready, failed (with the reason), stopping.

    *Readiness-gated reload.* A worker does not act on a SIGTERM in the signal handler: the loop
    looks at the records. If a newer generation exists, the SIGTERM is the reload's and is held:
    the old worker keeps accepting and serving until the newer generation is *promoted* (every
    worker the reload forked has imported the app and is accepting), then it drains. If the newer
    generation is *rolled back* (a worker failed to load the app, died, or was not ready within
    gunicorn's ``timeout``), the SIGTERM is forgotten and the old worker goes on serving (a
    SIGTERM that arrives after the verdict is a real stop: see the master's bookkeeping). If a
    worker of the newest generation received a SIGTERM that was not a reload's, the master is
    stopping, and held SIGTERMs become drains at once.

    *The master's bookkeeping.* After a rollback gunicorn still sees surplus workers: its
    ``reload()`` waits (up to ``graceful_timeout``, handling no other signal) until no worker
    older than the reload is left, and ``manage_workers()`` SIGTERMs the *oldest* surplus
    workers. The worker's ``age`` (gunicorn's spawn counter, read only by the master) therefore
    reports the workers that outlived a rolled-back generation as younger than it: the master
    stops waiting at once (the next HUP is handled right away) and picks the failed
    generation's workers as the surplus, never the ones that serve.

    *Partial failure rule: all or nothing.* A generation is promoted only when every worker of
    the reload is ready. If one fails, the whole generation is rolled back: its workers that were
    ready drain and exit too, and the site stays on the previous code (a mix of versions is never
    kept; the next HUP tries again).

    *Broken code never halts the master.* A new worker whose app does not load exits with
    :data:`~grace_plugins.gunicorn.worker.EXIT_NOT_LOADED` (75), not gunicorn's 3/4, as long
    as some worker of this master was ever ready; the first one logs the traceback once. An
    import that hangs is bounded by gunicorn's ``timeout`` (the worker logs where it was stuck
    and exits). After a rollback the code on disk is still broken: a worker gunicorn respawns
    later (crash, ``max_requests``, heartbeat, TTIN) that meets it waits 1, 2, 4 ... 60 s
    before exiting, so the master does not fork in a hot loop, and the log says the code on disk
    does not load. At first start (nothing serving yet) gunicorn's own behaviour is kept: the
    master exits with "App failed to load".

    *USR2 made whole.* A master started by ``kill -USR2`` (gunicorn passes the old master's
    pid in ``GUNICORN_PID``) stops the old master gracefully (SIGTERM; its workers drain) as
    soon as its own first generation is ready; gunicorn then promotes it and renames its
    pidfile. If the new master's workers never get ready, it exits and the old one serves on.

    *systemd.* The master, not gunicorn's arbiter alone, speaks the notify protocol:
    ``READY=1`` once the first generation is ready, ``RELOADING=1``/``READY=1`` around every
    HUP, ``STOPPING=1`` on a stop (see :mod:`grace_plugins.gunicorn.notify`).

    *Drain.* See :mod:`grace_plugins.gunicorn.worker`: close this worker's listener copies
    (never ``shutdown()``, the listener is shared), finish in-flight requests, answer requests on
    idle keep-alive connections with ``Connection: close``, close connections idle past
    ``keepalive``, stop at ``graceful_timeout``, log one line with the counts and the time.

Measured (2 workers x 4 threads, ``--keep-alive 5``, app importing in 1 s, on a 2-core machine
shared with other jobs, load average 8-15; ``bench/bench_gunicorn.py``): throughput
``grace_plugins.Worker`` / ``gthread`` = 0.94 (median of 4 ABBA runs; other runs gave 0.70-1.33:
the noise of the shared machine dominates), zero failed requests across a HUP for both;
p99 latency in the HUP window / steady p99 = 1.1-1.4 for both. Keep-alive clients idle 3 s
across 4 HUPs: 0/20 failed requests with this worker, 8/20 with gthread (connection closed
under them).

Limits
    ``--preload``: the app is imported once in the master, so HUP cannot load new code; the
    reload logs that and points to USR2. ``--reuse-port`` is refused at start (every worker would
    own a listening socket whose queued connections a drain would reset). While gunicorn's
    ``reload()`` waits for the old workers to drain (at most ``graceful_timeout``) the master
    handles no other signal; a second HUP is handled after it. A SIGTERM to the master within
    half a second of a rollback verdict can be taken for the reload's own SIGTERM (the old
    workers then serve until gunicorn kills them at ``graceful_timeout``). Tested with gunicorn
    24.1.1 and 27.0.1 (earlier releases have a different gthread worker).
"""

from __future__ import annotations

from grace_plugins.gunicorn.worker import EXIT_NOT_LOADED, Worker

__all__ = ["EXIT_NOT_LOADED", "Worker"]
