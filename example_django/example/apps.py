from django.apps import AppConfig


class ExampleConfig(AppConfig):
    name = "example"

    def ready(self):
        from example import checks  # noqa: F401 (registers the system check)
