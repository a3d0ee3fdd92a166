"""The project's settings, read at import by ``corpus_settings.sub`` (Flask: no Django)."""

MODE = "live"
