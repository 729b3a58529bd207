"""Configuration, read once from environment variables (12-factor).

``Settings.from_env`` is the only place that reads ``os.environ`` for the
application. A bad value raises ``ConfigError`` naming the variable, and the
app refuses to start.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent
DEFAULT_SQLITE_PATH = PROJECT_ROOT / "instance" / "crm.sqlite3"
DEFAULT_EXPIRED_MESSAGE = (
    "Your session has expired due to inactivity. Please send 'menu' to start over."
)


class ConfigError(ValueError):
    """A configuration variable has a value we cannot use."""


def _words(value: str) -> tuple[str, ...]:
    return tuple(w.strip().casefold() for w in value.split(",") if w.strip())


def normalize_database_url(url: str) -> str:
    """Accept Heroku's ``postgres://`` and plain ``postgresql://`` URLs.

    Both are mapped to the psycopg 3 driver that requirements.txt installs.
    """
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


@dataclass(frozen=True)
class Settings:
    database_url: str
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_tls_verify: bool = True  # False: accept a self-signed certificate on rediss:// (Heroku)
    whatsapp_api_url: str = "https://graph.facebook.com"
    whatsapp_api_version: str = "v23.0"
    whatsapp_access_token: str = ""
    whatsapp_phone_number_id: str = ""
    whatsapp_app_secret: str = ""
    whatsapp_verify_token: str = ""
    whatsapp_connect_timeout: float = 3.05
    whatsapp_read_timeout: float = 10.0
    whatsapp_max_attempts: int = 5
    whatsapp_business_account_id: str = ""
    templates_sync_cron: str = "7 * * * *"
    session_idle_minutes: float = 15.0
    session_cleanup_cron: str = "*/5 * * * *"
    session_expired_message: str = DEFAULT_EXPIRED_MESSAGE
    handover_idle_hours: float = 24.0  # a handover with no message either way ends after this
    turn_max_attempts: int = 3  # tries at one inbound message before it is set aside
    simulator_keep_days: float = 7.0  # the flow simulator's test contacts idle this long are deleted
    simulator_cleanup_cron: str = "17 3 * * *"
    main_menu_flow: str = "welcome"
    menu_keywords: tuple[str, ...] = ("menu",)
    cancel_keywords: tuple[str, ...] = ("cancel", "stop")
    optout_keywords: tuple[str, ...] = ("stop",)
    optin_keywords: tuple[str, ...] = ("start",)
    apifootball_url: str = "https://apiv3.apifootball.com"
    apifootball_key: str = ""
    apifootball_rate_per_minute: int = 60
    football_leagues: tuple[str, ...] = ()
    football_days_ahead: int = 7
    football_results_days: int = 2
    football_upcoming_cron: str = "*/15 * * * *"
    football_live_cron: str = "*/2 * * * *"
    football_results_cron: str = "*/30 * * * *"
    football_display_timezone: str = "UTC"
    football_result_template: str = ""
    football_upsert_chunk: int = 200
    football_upsert_pause_ms: float = 20.0
    operator_api_tokens: tuple[str, ...] = ()
    rq_dashboard_username: str = "admin"
    rq_dashboard_password: str = ""
    secret_key: str = ""  # signs the inbox's session cookies (crm.app.auth); empty: instance/secret_key
    session_cookie_secure: bool = True
    rq_dashboard_allow_delete: bool = False
    metrics_token: str = ""
    metrics_public: bool = False
    log_level: str = "INFO"
    rq_log_level: str = "WARNING"
    metrics_push_seconds: float = 5.0

    @classmethod
    def default(cls, name: str):
        """The default of a field: written once, on the field above."""
        return cls.__dataclass_fields__[name].default

    @classmethod
    def from_env(cls, env: os._Environ | dict | None = None) -> Settings:
        env = os.environ if env is None else env
        default = cls.default

        def get(name: str) -> str:
            return env.get(name.upper(), "").strip()

        def text(name: str) -> str:
            return get(name) or default(name)

        def raw(name: str) -> str:
            """Unstripped, and set-but-empty kept (an empty expiry message means no notice)."""
            return env.get(name.upper(), default(name))

        def words(name: str) -> tuple[str, ...]:
            value = env.get(name.upper())
            return default(name) if value is None else _words(value)

        def number(name: str, kind=float, minimum: float | None = None, above: float | None = None):
            value_text = get(name)
            if value_text == "":
                return default(name)
            try:
                value = kind(value_text)
            except ValueError:
                raise ConfigError(f"{name.upper()}={value_text!r} is not a valid {kind.__name__}") from None
            if minimum is not None and value < minimum:
                raise ConfigError(f"{name.upper()}={value_text!r} must be at least {minimum}")
            if above is not None and value <= above:
                raise ConfigError(f"{name.upper()} must be greater than {above}")
            return value

        def url(name: str, schemes: tuple[str, ...]) -> str:
            value = text(name)
            if not value.startswith(schemes):
                raise ConfigError(f"{name.upper()} must start with one of {', '.join(schemes)}")
            return value.rstrip("/")

        def cron(name: str) -> str:
            value = text(name)
            if not croniter.is_valid(value):
                raise ConfigError(f"{name.upper()}={value!r} is not a valid cron expression")
            return value

        def flag(name: str) -> bool:
            value = get(name).lower()
            if value == "":
                return default(name)
            if value in {"1", "true", "yes", "on"}:
                return True
            if value in {"0", "false", "no", "off"}:
                return False
            raise ConfigError(f"{name.upper()}={value!r} must be 1 or 0")

        def log_level(name: str) -> str:
            value = text(name).upper()
            if value not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
                raise ConfigError(f"{name.upper()}={value!r} must be DEBUG, INFO, WARNING or ERROR")
            return value

        database_url = normalize_database_url(get("database_url") or f"sqlite:///{DEFAULT_SQLITE_PATH}")
        if not database_url.startswith(("sqlite", "postgresql")):
            raise ConfigError("DATABASE_URL must be a sqlite:// or postgres(ql):// URL")
        display_tz = text("football_display_timezone")
        try:
            ZoneInfo(display_tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"FOOTBALL_DISPLAY_TIMEZONE={display_tz!r} is not a known time zone") from None
        secret_key = get("secret_key")
        if secret_key and len(secret_key) < 32:
            raise ConfigError("SECRET_KEY must have at least 32 characters (e.g. python3 -c "
                              "'import secrets; print(secrets.token_hex(32))')")
        version = text("whatsapp_api_version")
        if not (version.startswith("v") and version[1:].replace(".", "").isdigit()):
            raise ConfigError(f"WHATSAPP_API_VERSION={version!r} must look like v23.0")
        waba_id = get("whatsapp_business_account_id")
        if waba_id and not waba_id.isdigit():
            raise ConfigError(f"WHATSAPP_BUSINESS_ACCOUNT_ID={waba_id!r} must be the account's numeric id")

        return cls(
            database_url=database_url,
            redis_url=url("redis_url", ("redis://", "rediss://", "unix://")),
            redis_tls_verify=flag("redis_tls_verify"),
            whatsapp_api_url=url("whatsapp_api_url", ("http://", "https://")),
            whatsapp_api_version=version,
            whatsapp_access_token=get("whatsapp_access_token"),
            whatsapp_phone_number_id=get("whatsapp_phone_number_id"),
            whatsapp_app_secret=get("whatsapp_app_secret"),
            whatsapp_verify_token=get("whatsapp_verify_token"),
            whatsapp_connect_timeout=number("whatsapp_connect_timeout", minimum=0.1),
            whatsapp_read_timeout=number("whatsapp_read_timeout", minimum=0.1),
            whatsapp_max_attempts=number("whatsapp_max_attempts", kind=int, minimum=1),
            whatsapp_business_account_id=waba_id,
            templates_sync_cron=cron("templates_sync_cron"),
            session_idle_minutes=number("session_idle_minutes", above=0),
            session_cleanup_cron=cron("session_cleanup_cron"),
            session_expired_message=raw("session_expired_message"),
            handover_idle_hours=number("handover_idle_hours", above=0),
            turn_max_attempts=number("turn_max_attempts", kind=int, minimum=1),
            simulator_keep_days=number("simulator_keep_days", above=0),
            simulator_cleanup_cron=cron("simulator_cleanup_cron"),
            main_menu_flow=text("main_menu_flow"),
            menu_keywords=words("menu_keywords"),
            cancel_keywords=words("cancel_keywords"),
            optout_keywords=words("optout_keywords"),
            optin_keywords=words("optin_keywords"),
            apifootball_url=url("apifootball_url", ("http://", "https://")),
            apifootball_key=get("apifootball_key"),
            apifootball_rate_per_minute=number("apifootball_rate_per_minute", kind=int, minimum=1),
            football_leagues=words("football_leagues"),
            football_days_ahead=number("football_days_ahead", kind=int, minimum=1),
            football_results_days=number("football_results_days", kind=int, minimum=1),
            football_upcoming_cron=cron("football_upcoming_cron"),
            football_live_cron=cron("football_live_cron"),
            football_results_cron=cron("football_results_cron"),
            football_display_timezone=display_tz,
            football_result_template=get("football_result_template"),
            football_upsert_chunk=number("football_upsert_chunk", kind=int, minimum=1),
            football_upsert_pause_ms=number("football_upsert_pause_ms", minimum=0),
            operator_api_tokens=tuple(t.strip() for t in get("operator_api_tokens").split(",") if t.strip()),
            rq_dashboard_username=text("rq_dashboard_username"),
            rq_dashboard_password=get("rq_dashboard_password"),
            secret_key=secret_key,
            session_cookie_secure=flag("session_cookie_secure"),
            rq_dashboard_allow_delete=flag("rq_dashboard_allow_delete"),
            metrics_token=get("metrics_token"),
            metrics_public=flag("metrics_public"),
            log_level=log_level("log_level"),
            rq_log_level=log_level("rq_log_level"),
            metrics_push_seconds=number("metrics_push_seconds", minimum=0),
        )

    def __repr__(self) -> str:  # never print secrets
        return f"Settings(database={self.database_url.split('@')[-1]!r}, redis={self.redis_url.split('@')[-1]!r})"
