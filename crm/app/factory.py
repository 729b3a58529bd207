"""The application factory: configuration, extensions, then each package's ``init_app``.

Flask tutorial style: the factory only wires. Each package registers its own pieces
(blueprints, CLI groups, flow actions, schedules) in its ``init_app``.
"""

from __future__ import annotations

from pathlib import Path

from flask import Flask

import football
from crm import replies
from crm.app import api, cli, health, inbox, monitoring, simulator, templates_cli, webhook
from crm.base import extensions, logs, sqlite_writers
from crm.base.config import PROJECT_ROOT, Settings


def create_app(settings: Settings | None = None) -> Flask:
    """Application factory. ``settings`` defaults to the environment."""
    settings = settings or Settings.from_env()
    app = Flask(__name__, instance_path=str(PROJECT_ROOT / "instance"))
    app.config.update(
        SETTINGS=settings,
        SQLALCHEMY_DATABASE_URI=settings.database_url,
        # Statement parameters are personal data (phone numbers, what people wrote): never in
        # an exception's text, so never in a log line. (Idle connections to a server are
        # pinged before use: crm.base.extensions._ping_if_idle.)
        SQLALCHEMY_ENGINE_OPTIONS={"hide_parameters": True, **sqlite_writers.engine_options(settings.database_url)},
        MIGRATIONS_DIR=PROJECT_ROOT / "migrations",
        MAX_CONTENT_LENGTH=1024 * 1024,
        JSON_SORT_KEYS=False,
    )
    if settings.database_url.startswith("sqlite:///"):
        Path(settings.database_url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)

    logs.configure_logging(settings.log_level)
    logs.register_secrets(
        settings.whatsapp_access_token,
        settings.whatsapp_app_secret,
        settings.whatsapp_verify_token,
        settings.apifootball_key,
        settings.rq_dashboard_password,
        settings.metrics_token,
        *settings.operator_api_tokens,
    )
    extensions.init_app(app)
    app.extensions["crm.create_app"] = create_app  # for commands that build a throwaway app (flows test)
    replies.init_app(app)
    football.init_app(app)
    health.init_app(app)
    webhook.init_app(app)
    api.init_app(app)
    monitoring.init_app(app)
    cli.init_app(app)
    templates_cli.init_app(app)
    inbox.init_app(app)  # operators, sign-in, /inbox pages, `flask operators`
    simulator.init_app(app)  # /simulator: chat with the bot as a test contact (sign-in from the inbox)
    return app
