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

PROJECT_ROOT = Path(__file__).resolve().parent.parent
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
    whatsapp_api_url: str = "https://graph.facebook.com"
    whatsapp_api_version: str = "v23.0"
    whatsapp_access_token: str = ""
    whatsapp_phone_number_id: str = ""
    whatsapp_app_secret: str = ""
    whatsapp_verify_token: str = ""
    whatsapp_connect_timeout: float = 3.05
    whatsapp_read_timeout: float = 10.0
    whatsapp_max_attempts: int = 5
    session_idle_minutes: float = 15.0
    session_cleanup_cron: str = "*/5 * * * *"
    session_expired_message: str = DEFAULT_EXPIRED_MESSAGE
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
    operator_api_tokens: tuple[str, ...] = ()
    rq_dashboard_username: str = "admin"
    rq_dashboard_password: str = ""
    log_level: str = "INFO"
    rq_log_level: str = "WARNING"

    @classmethod
    def from_env(cls, env: os._Environ | dict | None = None) -> Settings:
        env = os.environ if env is None else env

        def get(name: str, default: str = "") -> str:
            return env.get(name, default).strip()

        def number(name: str, default: float, kind=float, minimum: float | None = None):
            raw = get(name)
            if raw == "":
                return default
            try:
                value = kind(raw)
            except ValueError:
                raise ConfigError(f"{name}={raw!r} is not a valid {kind.__name__}") from None
            if minimum is not None and value < minimum:
                raise ConfigError(f"{name}={raw!r} must be at least {minimum}")
            return value

        def url(name: str, default: str, schemes: tuple[str, ...]) -> str:
            value = get(name) or default
            if not value.startswith(schemes):
                raise ConfigError(f"{name} must start with one of {', '.join(schemes)}")
            return value.rstrip("/")

        database_url = get("DATABASE_URL") or f"sqlite:///{DEFAULT_SQLITE_PATH}"
        database_url = normalize_database_url(database_url)
        if not database_url.startswith(("sqlite", "postgresql")):
            raise ConfigError("DATABASE_URL must be a sqlite:// or postgres(ql):// URL")

        def cron_string(name: str, default: str) -> str:
            value = get(name) or default
            if not croniter.is_valid(value):
                raise ConfigError(f"{name}={value!r} is not a valid cron expression")
            return value

        cron = cron_string("SESSION_CLEANUP_CRON", "*/5 * * * *")
        display_tz = get("FOOTBALL_DISPLAY_TIMEZONE") or "UTC"
        try:
            ZoneInfo(display_tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"FOOTBALL_DISPLAY_TIMEZONE={display_tz!r} is not a known time zone") from None

        idle = number("SESSION_IDLE_MINUTES", 15.0)
        if idle <= 0:
            raise ConfigError("SESSION_IDLE_MINUTES must be greater than 0")

        version = get("WHATSAPP_API_VERSION") or "v23.0"
        if not (version.startswith("v") and version[1:].replace(".", "").isdigit()):
            raise ConfigError(f"WHATSAPP_API_VERSION={version!r} must look like v23.0")

        def log_level(name: str, default: str) -> str:
            value = (get(name) or default).upper()
            if value not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
                raise ConfigError(f"{name}={value!r} must be DEBUG, INFO, WARNING or ERROR")
            return value

        level = log_level("LOG_LEVEL", "INFO")

        return cls(
            database_url=database_url,
            redis_url=url("REDIS_URL", "redis://127.0.0.1:6379/0", ("redis://", "rediss://", "unix://")),
            whatsapp_api_url=url("WHATSAPP_API_URL", "https://graph.facebook.com", ("http://", "https://")),
            whatsapp_api_version=version,
            whatsapp_access_token=get("WHATSAPP_ACCESS_TOKEN"),
            whatsapp_phone_number_id=get("WHATSAPP_PHONE_NUMBER_ID"),
            whatsapp_app_secret=get("WHATSAPP_APP_SECRET"),
            whatsapp_verify_token=get("WHATSAPP_VERIFY_TOKEN"),
            whatsapp_connect_timeout=number("WHATSAPP_CONNECT_TIMEOUT", 3.05, minimum=0.1),
            whatsapp_read_timeout=number("WHATSAPP_READ_TIMEOUT", 10.0, minimum=0.1),
            whatsapp_max_attempts=number("WHATSAPP_MAX_ATTEMPTS", 5, kind=int, minimum=1),
            session_idle_minutes=idle,
            session_cleanup_cron=cron,
            session_expired_message=env.get("SESSION_EXPIRED_MESSAGE", DEFAULT_EXPIRED_MESSAGE),
            main_menu_flow=get("MAIN_MENU_FLOW") or "welcome",
            menu_keywords=_words(env.get("MENU_KEYWORDS", "menu")),
            cancel_keywords=_words(env.get("CANCEL_KEYWORDS", "cancel,stop")),
            optout_keywords=_words(env.get("OPTOUT_KEYWORDS", "stop")),
            optin_keywords=_words(env.get("OPTIN_KEYWORDS", "start")),
            apifootball_url=url("APIFOOTBALL_URL", "https://apiv3.apifootball.com", ("http://", "https://")),
            apifootball_key=get("APIFOOTBALL_KEY"),
            apifootball_rate_per_minute=number("APIFOOTBALL_RATE_PER_MINUTE", 60, kind=int, minimum=1),
            football_leagues=tuple(x for x in _words(env.get("FOOTBALL_LEAGUES", ""))),
            football_days_ahead=number("FOOTBALL_DAYS_AHEAD", 7, kind=int, minimum=1),
            football_results_days=number("FOOTBALL_RESULTS_DAYS", 2, kind=int, minimum=1),
            football_upcoming_cron=cron_string("FOOTBALL_UPCOMING_CRON", "*/15 * * * *"),
            football_live_cron=cron_string("FOOTBALL_LIVE_CRON", "*/2 * * * *"),
            football_results_cron=cron_string("FOOTBALL_RESULTS_CRON", "*/30 * * * *"),
            football_display_timezone=display_tz,
            football_result_template=get("FOOTBALL_RESULT_TEMPLATE"),
            operator_api_tokens=tuple(t.strip() for t in env.get("OPERATOR_API_TOKENS", "").split(",") if t.strip()),
            rq_dashboard_username=get("RQ_DASHBOARD_USERNAME") or "admin",
            rq_dashboard_password=get("RQ_DASHBOARD_PASSWORD"),
            log_level=level,
            rq_log_level=log_level("RQ_LOG_LEVEL", "WARNING"),
        )

    def __repr__(self) -> str:  # never print secrets
        return f"Settings(database={self.database_url.split('@')[-1]!r}, redis={self.redis_url.split('@')[-1]!r})"
