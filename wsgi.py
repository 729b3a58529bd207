"""Entry point for gunicorn and the ``flask`` command: ``flask --app wsgi ...``."""

from crm.app import create_app

app = create_app()
