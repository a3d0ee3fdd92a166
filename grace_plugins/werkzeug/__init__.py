"""The Werkzeug/Flask adapter: ``grace_plugins.run_simple`` and ``flask hotrun``.

Same shape as the Django adapter: :mod:`.serving` turns werkzeug's options into the core's
``serve`` function, :mod:`.server` is werkzeug's server with counted connections, :mod:`.reloader`
turns werkzeug's reloader loops into upgrade requests, :mod:`.command` is ``flask hotrun``.
"""

from grace_plugins.werkzeug.serving import ServerSettings, run_simple, serve_with_upgrades

__all__ = ["ServerSettings", "run_simple", "serve_with_upgrades"]
