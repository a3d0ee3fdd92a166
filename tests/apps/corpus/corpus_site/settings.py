"""The corpus as a Django site: auth and contenttypes (models that need the settings)."""

SECRET_KEY = "corpus-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "grace_plugins.django",
]
ROOT_URLCONF = "corpus_site.urls"
DATABASES = {}
USE_TZ = True
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "loggers": {"django.server": {"level": "WARNING"}},
}
