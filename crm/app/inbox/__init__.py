"""The operators' inbox: server-rendered pages on the web process (``/inbox``, ``/login``).

Scripts and styles are served from ``static/`` by the app itself (no CDN, no build step);
new messages and handovers arrive by polling ``/inbox/poll`` every few seconds.
"""

from __future__ import annotations

from flask import Blueprint, Flask

bp = Blueprint("inbox", __name__, url_prefix="/inbox", template_folder="templates", static_folder="static")


def init_app(app: Flask) -> None:
    """Operators, sign-in, the inbox pages and ``flask operators``."""
    import crm.base.operators  # noqa: F401 - the models
    from crm.app.auth import init_auth
    from crm.app.operators_cli import operators_cli
    from crm.logs import register_secrets

    register_secrets(app.config["SETTINGS"].secret_key)
    init_auth(app)
    app.register_blueprint(bp)
    app.cli.add_command(operators_cli)


from crm.app.inbox import views  # noqa: E402,F401 - routes register on bp
