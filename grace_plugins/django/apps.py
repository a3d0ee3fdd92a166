"""The Django app whose only job is to make ``manage.py runhot`` available."""

from django.apps import AppConfig


class GracePluginsConfig(AppConfig):
    """``INSTALLED_APPS += ["grace_plugins.django"]``: no models, no migrations."""

    name = "grace_plugins.django"
    # The default label would be "django", which reads as Django itself in messages.
    label = "grace_plugins"
    verbose_name = "grace_plugins (hot upgrades)"
