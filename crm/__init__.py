"""The CRM application: factory, configuration, database, contacts and messages."""

from __future__ import annotations

from flask import Flask

from crm.config import PROJECT_ROOT, Settings


def create_app(settings: Settings | None = None) -> Flask:
    """Application factory. ``settings`` defaults to the environment."""
    settings = settings or Settings.from_env()
    app = Flask(__name__, instance_path=str(PROJECT_ROOT / "instance"))
    app.config.update(
        SETTINGS=settings,
        SQLALCHEMY_DATABASE_URI=settings.database_url,
        # A server may drop idle connections; an SQLite file cannot (and a ping per checkout
        # costs the webhook a round trip).
        SQLALCHEMY_ENGINE_OPTIONS={"pool_pre_ping": not settings.database_url.startswith("sqlite")},
        MIGRATIONS_DIR=PROJECT_ROOT / "migrations",
        MAX_CONTENT_LENGTH=1024 * 1024,
        JSON_SORT_KEYS=False,
    )
    if settings.database_url.startswith("sqlite:///"):
        from pathlib import Path

        Path(settings.database_url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)

    from crm.logs import configure_logging, register_secrets

    configure_logging(settings.log_level)
    register_secrets(
        settings.whatsapp_access_token,
        settings.whatsapp_app_secret,
        settings.whatsapp_verify_token,
        settings.apifootball_key,
        settings.rq_dashboard_password,
        *settings.operator_api_tokens,
    )

    from crm.extensions import init_extensions

    init_extensions(app)

    # Import every model so that Alembic and the app see the whole schema.
    import crm.models  # noqa: F401
    import flows.models  # noqa: F401
    import football.models  # noqa: F401
    from crm.health import bp as health_bp
    from integrations.whatsapp.webhook import bp as webhook_bp

    app.register_blueprint(health_bp)
    app.register_blueprint(webhook_bp)
    from crm.api import bp as api_bp
    from crm.monitoring import init_monitoring

    app.register_blueprint(api_bp)
    init_monitoring(app)

    from flows.cli import flows_cli, sessions_cli

    app.cli.add_command(flows_cli)
    app.cli.add_command(sessions_cli)
    from football.cli import football_cli

    app.cli.add_command(football_cli)
    return app
