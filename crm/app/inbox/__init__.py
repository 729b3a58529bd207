"""The operators' inbox: server-rendered pages on the web process (``/inbox``, ``/login``).

Scripts and styles are served from ``static/`` by the app itself (no CDN, no build step);
new messages and handovers arrive by polling ``/inbox/poll`` every few seconds.
"""

from __future__ import annotations

from flask import Blueprint, Flask

bp = Blueprint("inbox", __name__, url_prefix="/inbox", template_folder="templates", static_folder="static")

from crm.app import auth  # noqa: E402 - auth's before_request is used by the views below
from crm.app.inbox import views  # noqa: E402,F401 - routes register on bp
from crm.app.operators_cli import operators_cli  # noqa: E402
from crm.base.logs import register_secrets  # noqa: E402


def init_app(app: Flask) -> None:
    """Operators, sign-in, the inbox pages and ``flask operators``."""
    register_secrets(app.config["SETTINGS"].secret_key)
    auth.init_app(app)
    app.register_blueprint(bp)
    app.cli.add_command(operators_cli)
