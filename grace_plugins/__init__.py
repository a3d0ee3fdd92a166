"""grace_plugins: zero-downtime hot upgrade (``kill -HUP``) for Python web servers.

``import grace_plugins`` imports no web framework: :func:`run_simple` (Werkzeug/Flask) and
:class:`Worker` (Gunicorn) are loaded on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from grace_plugins.errors import ExitCode, GraceError
from grace_plugins.options import Options

__version__ = "0.1.0"
__all__ = ["ExitCode", "GraceError", "Options", "Worker", "run_simple", "__version__"]

if TYPE_CHECKING:
    from grace_plugins.gunicorn import Worker
    from grace_plugins.werkzeug import run_simple

_LAZY = {
    "run_simple": ("grace_plugins.werkzeug", "run_simple"),
    "Worker": ("grace_plugins.gunicorn", "Worker"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module_name, attribute = _LAZY[name]
        value = getattr(importlib.import_module(module_name), attribute)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'grace_plugins' has no attribute {name!r}")
