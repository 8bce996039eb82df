"""Every setting EventFlow reads, parsed from the environment once and validated."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

DEV_SECRET_KEY = "dev-secret-key-change-me"
DEV_JWT_SECRET_KEY = "dev-jwt-secret-key-change-me-please"
MIN_PRODUCTION_SECRET_BYTES = 32
RATE_LIMIT_PATTERN = re.compile(r"^\s*([1-9][0-9]{0,8})\s*/\s*(second|minute|hour)\s*$")


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names it and says why."""


@dataclass(frozen=True)
class Settings:
    env: str = "development"
    database_url: str = ""
    redis_url: str | None = None
    secret_key: str = DEV_SECRET_KEY
    jwt_secret_key: str = DEV_JWT_SECRET_KEY
    jwt_access_token_expires: float = 900.0
    jwt_refresh_token_expires: float = 7 * 24 * 3600.0
    handlers: tuple[str, ...] = ()
    max_attempts: int = 5
    retry_base_seconds: float = 1.0
    retry_max_seconds: float = 300.0
    visibility_timeout_seconds: float = 300.0
    recovery_interval_seconds: float = 30.0
    port: int = 5000
    # Security (CONTRACT section 9). Limits use the `N/second|minute|hour` form; None = no limit.
    rate_limit_login: str = "10/minute"
    rate_limit_register: str = "20/hour"
    rate_limit_ingest: str | None = None
    proxy_hops: int = 0  # how many proxies in front set X-Forwarded-* (0: trust none)
    socket_auth_timeout_seconds: float = 10.0
    session_idle_seconds: float = 1800.0
    session_max_seconds: float = 12 * 3600.0
    log_format: str = "text"  # json|text: the shape of every log line (eventflow/logs.py)
    # Retention (CONTRACT section 11): the workers purge terminal events older than this many
    # days (0 = never), once per interval across all workers.
    retention_days: int = 0
    retention_interval_seconds: float = 24 * 3600.0
    # Alerts (CONTRACT section 11): rules evaluated every recovery interval, notices POSTed to
    # the webhook when one fires or resolves (eventflow/alerts.py); no URL = no notices.
    alert_webhook_url: str | None = None
    alert_webhook_secret: str | None = None
    alert_format: str = "json"  # json|slack: the body posted (eventflow/alert_webhook.py)
    alert_dlq_size: int = 100
    alert_oldest_pending_seconds: float = 300.0
    alert_no_worker_seconds: float = 60.0
    alert_repeat_seconds: float = 3600.0
    alert_dashboard_url: str = ""
    # Metrics history (CONTRACT section 11): per-minute rollups kept this many days; each
    # process flushes what it counted every flush interval (60 s; tests shorten it).
    metrics_retention_days: int = 30
    metrics_flush_seconds: float = 60.0
    instance_path: str = ""
    queue_path: str = field(default="")

    @property
    def embedded(self) -> bool:
        """True when running on SQLite + Huey's SQLite queue (no servers)."""
        return self.redis_url is None

    @property
    def production(self) -> bool:
        return self.env == "production"


def _number(env: Mapping[str, str], name: str, default: float, *, minimum: float) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, got {raw!r}") from None
    if not math.isfinite(value) or value < minimum:
        raise ConfigError(f"{name} must be a finite number >= {minimum:g}, got {raw!r}")
    return value


def _integer(env: Mapping[str, str], name: str, default: int, *, minimum: int, maximum: int) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if not minimum <= value <= maximum:
        raise ConfigError(f"{name} must be between {minimum} and {maximum}, got {raw!r}")
    return value


def _database_url(env: Mapping[str, str], instance_path: str) -> str:
    url = env.get("DATABASE_URL", "").strip()
    if not url:
        return "sqlite:///" + str(Path(instance_path) / "eventflow.sqlite3")
    # Heroku-style URLs say postgres://, which SQLAlchemy no longer accepts.
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if not url.startswith(("postgresql", "sqlite")):
        raise ConfigError(f"DATABASE_URL must be a postgresql:// or sqlite:// URL, got {url!r}")
    return url


def _redis_url(env: Mapping[str, str]) -> str | None:
    url = env.get("REDIS_URL", "").strip()
    if not url:
        return None
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"REDIS_URL must be a redis:// URL, got {url!r}")
    return url


def _rate_limit(env: Mapping[str, str], name: str) -> str | None:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return None
    match = RATE_LIMIT_PATTERN.match(raw)
    if match is None:
        raise ConfigError(f"{name} must look like 10/minute (N/second|minute|hour), got {raw!r}")
    return f"{match.group(1)}/{match.group(2)}"


def _http_url(env: Mapping[str, str], name: str) -> str | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{name} must be an http:// or https:// URL, got {raw!r}")
    return raw


ALERT_FORMATS = ("json", "slack")


def _alert_format(env: Mapping[str, str]) -> str:
    raw = env.get("EVENTFLOW_ALERT_FORMAT", "")
    value = raw.strip().lower() or "json"
    if value not in ALERT_FORMATS:
        raise ConfigError(f"EVENTFLOW_ALERT_FORMAT must be json or slack, got {raw!r}")
    return value


def _app_env(env: Mapping[str, str]) -> str:
    """development only when asked for, or on the embedded default (no DATABASE_URL)."""
    raw = env.get("EVENTFLOW_ENV", "").strip()
    if not raw:
        return "production" if env.get("DATABASE_URL", "").strip() else "development"
    if raw not in ("development", "production", "test"):
        raise ConfigError(f"EVENTFLOW_ENV must be development, production or test, got {raw!r}")
    return raw


LOG_FORMATS = ("json", "text")


def log_format(env: Mapping[str, str]) -> str:
    """EVENTFLOW_LOG_FORMAT: json by default in production, text in development and test."""
    raw = env.get("EVENTFLOW_LOG_FORMAT", "")
    value = raw.strip().lower()
    if not value:
        return "json" if _app_env(env) == "production" else "text"
    if value not in LOG_FORMATS:
        raise ConfigError(f"EVENTFLOW_LOG_FORMAT must be json or text, got {raw!r}")
    return value


def _check_production_secrets(settings: Settings, env: Mapping[str, str]) -> None:
    # Outside explicit development a default secret would let anyone forge an admin token
    # with the key printed in this file.
    for name, value, default in (
        ("SECRET_KEY", settings.secret_key, DEV_SECRET_KEY),
        ("JWT_SECRET_KEY", settings.jwt_secret_key, DEV_JWT_SECRET_KEY),
    ):
        if not env.get(name):
            raise ConfigError(
                f"{name} must be set in production (EVENTFLOW_ENV=production, the default "
                "when DATABASE_URL is set; use EVENTFLOW_ENV=development to run without it)"
            )
        if value == default:
            raise ConfigError(f"{name} is the development default; set a real secret in production")
        if len(value.encode()) < MIN_PRODUCTION_SECRET_BYTES:
            raise ConfigError(
                f"{name} must be at least {MIN_PRODUCTION_SECRET_BYTES} bytes in production"
            )


# Every variable load_settings() reads; tests hold docker-compose.yml to these names.
ENVIRONMENT_VARIABLES = (
    "EVENTFLOW_ENV",
    "DATABASE_URL",
    "REDIS_URL",
    "SECRET_KEY",
    "JWT_SECRET_KEY",
    "JWT_ACCESS_TOKEN_EXPIRES_SECONDS",
    "JWT_REFRESH_TOKEN_EXPIRES_SECONDS",
    "EVENTFLOW_HANDLERS",
    "EVENTFLOW_MAX_ATTEMPTS",
    "EVENTFLOW_RETRY_BASE_SECONDS",
    "EVENTFLOW_RETRY_MAX_SECONDS",
    "EVENTFLOW_VISIBILITY_TIMEOUT_SECONDS",
    "EVENTFLOW_RECOVERY_INTERVAL_SECONDS",
    "PORT",
    "EVENTFLOW_RATE_LIMIT_LOGIN",
    "EVENTFLOW_RATE_LIMIT_REGISTER",
    "EVENTFLOW_RATE_LIMIT_INGEST",
    "EVENTFLOW_PROXY_HOPS",
    "EVENTFLOW_SOCKET_AUTH_TIMEOUT_SECONDS",
    "EVENTFLOW_SESSION_IDLE_SECONDS",
    "EVENTFLOW_SESSION_MAX_SECONDS",
    "EVENTFLOW_LOG_FORMAT",
    "EVENTFLOW_RETENTION_DAYS",
    "EVENTFLOW_RETENTION_INTERVAL_SECONDS",
    "EVENTFLOW_ALERT_WEBHOOK_URL",
    "EVENTFLOW_ALERT_WEBHOOK_SECRET",
    "EVENTFLOW_ALERT_FORMAT",
    "EVENTFLOW_ALERT_DLQ_SIZE",
    "EVENTFLOW_ALERT_OLDEST_PENDING_SECONDS",
    "EVENTFLOW_ALERT_NO_WORKER_SECONDS",
    "EVENTFLOW_ALERT_REPEAT_SECONDS",
    "EVENTFLOW_PUBLIC_URL",
    "EVENTFLOW_METRICS_RETENTION_DAYS",
    "EVENTFLOW_METRICS_FLUSH_SECONDS",
)


def load_settings(env: Mapping[str, str] | None = None, instance_path: str = "") -> Settings:
    """Build the validated settings from an environment mapping (os.environ by default)."""
    env = os.environ if env is None else env
    app_env = _app_env(env)
    handlers = tuple(p.strip() for p in env.get("EVENTFLOW_HANDLERS", "").split(",") if p.strip())
    retry_base = _number(env, "EVENTFLOW_RETRY_BASE_SECONDS", 1.0, minimum=0)
    retry_max = _number(env, "EVENTFLOW_RETRY_MAX_SECONDS", 300.0, minimum=0)
    if retry_max < retry_base:
        raise ConfigError(
            "EVENTFLOW_RETRY_MAX_SECONDS must be >= EVENTFLOW_RETRY_BASE_SECONDS "
            f"({retry_max:g} < {retry_base:g})"
        )
    port = _integer(env, "PORT", 5000, minimum=1, maximum=65535)
    settings = Settings(
        env=app_env,
        database_url=_database_url(env, instance_path),
        redis_url=_redis_url(env),
        secret_key=env.get("SECRET_KEY") or DEV_SECRET_KEY,
        jwt_secret_key=env.get("JWT_SECRET_KEY") or DEV_JWT_SECRET_KEY,
        jwt_access_token_expires=_number(env, "JWT_ACCESS_TOKEN_EXPIRES_SECONDS", 900.0, minimum=1),
        jwt_refresh_token_expires=_number(
            env, "JWT_REFRESH_TOKEN_EXPIRES_SECONDS", 7 * 24 * 3600.0, minimum=1
        ),
        handlers=handlers,
        max_attempts=_integer(env, "EVENTFLOW_MAX_ATTEMPTS", 5, minimum=1, maximum=100),
        retry_base_seconds=retry_base,
        retry_max_seconds=retry_max,
        visibility_timeout_seconds=_number(
            env, "EVENTFLOW_VISIBILITY_TIMEOUT_SECONDS", 300.0, minimum=0.1
        ),
        recovery_interval_seconds=_number(
            env, "EVENTFLOW_RECOVERY_INTERVAL_SECONDS", 30.0, minimum=0.1
        ),
        port=port,
        rate_limit_login=_rate_limit(env, "EVENTFLOW_RATE_LIMIT_LOGIN") or "10/minute",
        rate_limit_register=_rate_limit(env, "EVENTFLOW_RATE_LIMIT_REGISTER") or "20/hour",
        rate_limit_ingest=_rate_limit(env, "EVENTFLOW_RATE_LIMIT_INGEST"),
        proxy_hops=_integer(env, "EVENTFLOW_PROXY_HOPS", 0, minimum=0, maximum=5),
        socket_auth_timeout_seconds=_number(
            env, "EVENTFLOW_SOCKET_AUTH_TIMEOUT_SECONDS", 10.0, minimum=0.1
        ),
        session_idle_seconds=_number(env, "EVENTFLOW_SESSION_IDLE_SECONDS", 1800.0, minimum=1),
        session_max_seconds=_number(env, "EVENTFLOW_SESSION_MAX_SECONDS", 12 * 3600.0, minimum=1),
        log_format=log_format(env),
        retention_days=_integer(env, "EVENTFLOW_RETENTION_DAYS", 0, minimum=0, maximum=36500),
        retention_interval_seconds=_number(
            env, "EVENTFLOW_RETENTION_INTERVAL_SECONDS", 24 * 3600.0, minimum=0.1
        ),
        alert_webhook_url=_http_url(env, "EVENTFLOW_ALERT_WEBHOOK_URL"),
        alert_webhook_secret=env.get("EVENTFLOW_ALERT_WEBHOOK_SECRET") or None,
        alert_format=_alert_format(env),
        alert_dlq_size=_integer(env, "EVENTFLOW_ALERT_DLQ_SIZE", 100, minimum=0, maximum=10**9),
        alert_oldest_pending_seconds=_number(
            env, "EVENTFLOW_ALERT_OLDEST_PENDING_SECONDS", 300.0, minimum=0
        ),
        alert_no_worker_seconds=_number(env, "EVENTFLOW_ALERT_NO_WORKER_SECONDS", 60.0, minimum=0),
        alert_repeat_seconds=_number(env, "EVENTFLOW_ALERT_REPEAT_SECONDS", 3600.0, minimum=1),
        # Where the dashboard is, for the links in alerts (workers cannot know their web's host).
        alert_dashboard_url=(
            _http_url(env, "EVENTFLOW_PUBLIC_URL") or f"http://127.0.0.1:{port}"
        ).rstrip("/")
        + "/dashboard",
        metrics_retention_days=_integer(
            env, "EVENTFLOW_METRICS_RETENTION_DAYS", 30, minimum=1, maximum=3650
        ),
        metrics_flush_seconds=_number(env, "EVENTFLOW_METRICS_FLUSH_SECONDS", 60.0, minimum=0.1),
        instance_path=instance_path,
        queue_path=str(Path(instance_path) / "queue.sqlite3"),
    )
    if app_env == "production":
        _check_production_secrets(settings, env)
    return settings
