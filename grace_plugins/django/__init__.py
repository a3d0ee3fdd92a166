"""Hot upgrades for Django's development server: ``python manage.py runhot``.

Add ``"grace_plugins.django"`` to ``INSTALLED_APPS``; the app ships the ``runhot`` management
command, which is Django's ``runserver`` (same options, checks, banner and static files
handling) whose server takes over the listening socket on ``kill -HUP`` or a saved file, without
refusing or cutting off a single request. Nothing here is imported by ``import grace_plugins``.
"""
