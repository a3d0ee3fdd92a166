"""What an app imports only at its first request, imported before a worker (or a mold) is ready.

Django imports the URLconf, and the views through it, at the first request a process serves.
So a save that broke a view passed the import of the WSGI module: the new generation was ready
and every request answered 500 until the fix. And with ``--preload`` each worker imported the
views for itself, a copy of their pages per worker. Imported before ready, a broken view is a
broken app (rolled back), and the views are in the pages the mold shares with its workers.
``manage.py runhot`` does the same in each generation. Django is not imported here: it is used
only where the app loaded it.
"""

from __future__ import annotations

import sys


def import_lazy_parts() -> None:
    """Import what the app would import at its first request; raises what that raises."""
    conf = sys.modules.get("django.conf")
    urls = sys.modules.get("django.urls")
    if conf is None or urls is None or not conf.settings.configured:
        return
    if getattr(conf.settings, "ROOT_URLCONF", None):
        _ = urls.get_resolver().url_patterns  # imports the URLconf; raises what it raises
