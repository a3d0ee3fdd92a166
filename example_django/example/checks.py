"""A system check: runhot runs the checks before new code serves, so a failing one is rolled
back (try VERSION = "" in views.py)."""

from django.core.checks import Error, register


@register()
def version_is_set(app_configs, **kwargs):
    from example import views

    if not isinstance(views.VERSION, str) or not views.VERSION:
        return [
            Error(
                "example.views.VERSION must be a non-empty string.",
                hint='Set VERSION = "v2" (any name for the code version).',
                id="example.E001",
            )
        ]
    return []
