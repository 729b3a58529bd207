"""The WSGI app for any WSGI server, and for the ``flask`` command: ``flask --app wsgi ...``.

The Procfile's ``web`` process serves the app with Granian: ``python -m crm.app.server``.
"""

from crm.app import create_app

app = create_app()
