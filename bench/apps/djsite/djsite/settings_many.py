"""The benchmark site with many installed apps: every contrib app that installs without a
system library (GeoDjango needs GDAL, ``postgres`` psycopg), each wired as a project would.

Used by ``bench/memory.py`` (``DJANGO_SETTINGS_MODULE=djsite.settings_many``): issue 25's idle
memory goal is stated for a site with many installed apps.
"""

from djsite.settings import *  # noqa: F403

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.admindocs",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.sites",
    "django.contrib.flatpages",
    "django.contrib.redirects",
    "django.contrib.sitemaps",
    "django.contrib.humanize",
    "django.contrib.syndication",
    "shop",
    "grace_plugins.django",
]
SITE_ID = 1
MIDDLEWARE = [
    *MIDDLEWARE,  # noqa: F405
    "django.contrib.admindocs.middleware.XViewMiddleware",
    "django.contrib.redirects.middleware.RedirectFallbackMiddleware",
    "django.contrib.flatpages.middleware.FlatpageFallbackMiddleware",
]
ROOT_URLCONF = "djsite.urls_many"
