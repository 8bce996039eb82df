"""Settings come from the environment only; bad values stop start-up with a clear message."""

import pytest

from eventflow.config import ConfigError, load_settings
from tests.processes import flask_cli

STRONG = "s" * 40


def test_defaults_are_the_embedded_mode(tmp_path):
    settings = load_settings({}, str(tmp_path))
    assert settings.embedded
    assert settings.database_url == f"sqlite:///{tmp_path}/eventflow.sqlite3"
    assert settings.max_attempts == 5
    assert settings.retry_base_seconds == 1.0 and settings.retry_max_seconds == 300.0
    assert settings.visibility_timeout_seconds == 300.0
    assert settings.recovery_interval_seconds == 30.0
    assert settings.port == 5000


def test_durations_accept_fractions_and_urls_are_normalised():
    settings = load_settings(
        {
            "EVENTFLOW_RETRY_BASE_SECONDS": "0.2",
            "EVENTFLOW_VISIBILITY_TIMEOUT_SECONDS": "1.5",
            "DATABASE_URL": "postgres://u@h/db",
            "REDIS_URL": "redis://127.0.0.1:6379/2",
            "EVENTFLOW_HANDLERS": "a.b, c.d ,",
            "EVENTFLOW_ENV": "development",
        }
    )
    assert settings.retry_base_seconds == 0.2
    assert settings.visibility_timeout_seconds == 1.5
    assert settings.database_url == "postgresql://u@h/db"
    assert not settings.embedded
    assert settings.handlers == ("a.b", "c.d")


@pytest.mark.parametrize(
    "env, named",
    [
        ({"EVENTFLOW_MAX_ATTEMPTS": "zero"}, "EVENTFLOW_MAX_ATTEMPTS"),
        ({"EVENTFLOW_MAX_ATTEMPTS": "0"}, "EVENTFLOW_MAX_ATTEMPTS"),
        ({"EVENTFLOW_RETRY_BASE_SECONDS": "-1"}, "EVENTFLOW_RETRY_BASE_SECONDS"),
        ({"EVENTFLOW_RETRY_MAX_SECONDS": "nan"}, "EVENTFLOW_RETRY_MAX_SECONDS"),
        ({"EVENTFLOW_RETRY_BASE_SECONDS": "10", "EVENTFLOW_RETRY_MAX_SECONDS": "1"}, "MAX"),
        ({"EVENTFLOW_VISIBILITY_TIMEOUT_SECONDS": "soon"}, "VISIBILITY"),
        ({"EVENTFLOW_RECOVERY_INTERVAL_SECONDS": "0"}, "RECOVERY"),
        ({"PORT": "99999"}, "PORT"),
        ({"DATABASE_URL": "mysql://x"}, "DATABASE_URL"),
        ({"REDIS_URL": "http://x"}, "REDIS_URL"),
        ({"EVENTFLOW_ENV": "staging"}, "EVENTFLOW_ENV"),
        ({"EVENTFLOW_RATE_LIMIT_LOGIN": "10 per minute"}, "EVENTFLOW_RATE_LIMIT_LOGIN"),
        ({"EVENTFLOW_RATE_LIMIT_INGEST": "0/second"}, "EVENTFLOW_RATE_LIMIT_INGEST"),
        ({"EVENTFLOW_RATE_LIMIT_REGISTER": "5/day"}, "EVENTFLOW_RATE_LIMIT_REGISTER"),
        ({"EVENTFLOW_PROXY_HOPS": "-1"}, "EVENTFLOW_PROXY_HOPS"),
        ({"EVENTFLOW_SOCKET_AUTH_TIMEOUT_SECONDS": "never"}, "EVENTFLOW_SOCKET_AUTH_TIMEOUT"),
        ({"JWT_REFRESH_TOKEN_EXPIRES_SECONDS": "0"}, "JWT_REFRESH_TOKEN_EXPIRES_SECONDS"),
        ({"EVENTFLOW_LOG_FORMAT": "yaml"}, "EVENTFLOW_LOG_FORMAT"),
        ({"EVENTFLOW_RETENTION_DAYS": "30d"}, "EVENTFLOW_RETENTION_DAYS"),
        ({"EVENTFLOW_RETENTION_DAYS": "-1"}, "EVENTFLOW_RETENTION_DAYS"),
        ({"EVENTFLOW_RETENTION_INTERVAL_SECONDS": "0"}, "EVENTFLOW_RETENTION_INTERVAL"),
        ({"EVENTFLOW_ALERT_WEBHOOK_URL": "ftp://hooks.example"}, "EVENTFLOW_ALERT_WEBHOOK_URL"),
        ({"EVENTFLOW_ALERT_WEBHOOK_URL": "hooks.example/x"}, "EVENTFLOW_ALERT_WEBHOOK_URL"),
        ({"EVENTFLOW_ALERT_FORMAT": "teams"}, "EVENTFLOW_ALERT_FORMAT"),
        ({"EVENTFLOW_ALERT_DLQ_SIZE": "-1"}, "EVENTFLOW_ALERT_DLQ_SIZE"),
        ({"EVENTFLOW_ALERT_DLQ_SIZE": "lots"}, "EVENTFLOW_ALERT_DLQ_SIZE"),
        ({"EVENTFLOW_ALERT_OLDEST_PENDING_SECONDS": "5m"}, "EVENTFLOW_ALERT_OLDEST_PENDING"),
        ({"EVENTFLOW_ALERT_NO_WORKER_SECONDS": "-5"}, "EVENTFLOW_ALERT_NO_WORKER_SECONDS"),
        ({"EVENTFLOW_ALERT_REPEAT_SECONDS": "0"}, "EVENTFLOW_ALERT_REPEAT_SECONDS"),
        ({"EVENTFLOW_PUBLIC_URL": "example.com"}, "EVENTFLOW_PUBLIC_URL"),
        ({"EVENTFLOW_METRICS_RETENTION_DAYS": "0"}, "EVENTFLOW_METRICS_RETENTION_DAYS"),
        ({"EVENTFLOW_METRICS_FLUSH_SECONDS": "soon"}, "EVENTFLOW_METRICS_FLUSH_SECONDS"),
    ],
)
def test_bad_values_are_refused_naming_the_setting(env, named):
    with pytest.raises(ConfigError, match=named):
        load_settings(env)


@pytest.mark.parametrize(
    "secrets",
    [
        {},
        {"SECRET_KEY": STRONG},
        {"SECRET_KEY": "dev-secret-key-change-me", "JWT_SECRET_KEY": STRONG},
        {"SECRET_KEY": STRONG, "JWT_SECRET_KEY": "too-short"},
    ],
)
def test_production_refuses_missing_default_or_short_secrets(secrets):
    with pytest.raises(ConfigError, match="SECRET_KEY"):
        load_settings({"EVENTFLOW_ENV": "production", **secrets})


@pytest.mark.parametrize("secrets", [{}, {"SECRET_KEY": STRONG, "JWT_SECRET_KEY": "short"}])
def test_a_server_database_without_an_explicit_environment_is_production(secrets):
    # Only explicit development (or the embedded default) may run on the public dev secrets.
    with pytest.raises(ConfigError, match="SECRET_KEY"):
        load_settings({"DATABASE_URL": "postgresql://u@h/db", **secrets})


@pytest.mark.parametrize("env", ["development", "test"])
def test_explicit_development_may_use_the_default_secrets(env):
    settings = load_settings({"DATABASE_URL": "postgresql://u@h/db", "EVENTFLOW_ENV": env})
    assert settings.env == env and not settings.production


def test_the_embedded_default_is_development():
    assert load_settings({}).env == "development"


def test_alert_settings_have_the_contract_defaults():
    settings = load_settings({})
    assert settings.alert_webhook_url is None and settings.alert_webhook_secret is None
    assert settings.alert_format == "json"
    assert settings.alert_dlq_size == 100
    assert settings.alert_oldest_pending_seconds == 300
    assert settings.alert_no_worker_seconds == 60
    assert settings.alert_repeat_seconds == 3600
    assert settings.alert_dashboard_url == "http://127.0.0.1:5000/dashboard"
    tuned = load_settings(
        {
            "EVENTFLOW_ALERT_WEBHOOK_URL": "https://hooks.example/T1",
            "EVENTFLOW_ALERT_FORMAT": "Slack",
            "EVENTFLOW_PUBLIC_URL": "https://events.example/",
        }
    )
    assert tuned.alert_webhook_url == "https://hooks.example/T1"
    assert tuned.alert_format == "slack"
    assert tuned.alert_dashboard_url == "https://events.example/dashboard"


def test_security_settings_have_the_contract_defaults():
    settings = load_settings({})
    assert settings.rate_limit_login == "10/minute"
    assert settings.rate_limit_register == "20/hour"
    assert settings.rate_limit_ingest is None
    assert settings.proxy_hops == 0
    assert settings.socket_auth_timeout_seconds == 10
    assert settings.session_idle_seconds == 1800 and settings.session_max_seconds == 12 * 3600
    tuned = load_settings({"EVENTFLOW_RATE_LIMIT_INGEST": " 500 / second "})
    assert tuned.rate_limit_ingest == "500/second"


def test_production_starts_with_real_secrets():
    settings = load_settings(
        {"EVENTFLOW_ENV": "production", "SECRET_KEY": STRONG, "JWT_SECRET_KEY": STRONG + "j"}
    )
    assert settings.env == "production"


def test_the_cli_stops_with_a_one_line_reason_on_a_bad_setting(base_env):
    env = {**base_env, "EVENTFLOW_ENV": "production", "SECRET_KEY": "", "JWT_SECRET_KEY": ""}
    result = flask_cli(env, "db", "current")
    assert result.returncode != 0
    assert "configuration error: SECRET_KEY must be set" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unimportable_handler_module_stops_start_up(base_env):
    env = {**base_env, "EVENTFLOW_HANDLERS": "no_such_module_xyz"}
    result = flask_cli(env, "db", "current")
    assert result.returncode != 0
    assert "no_such_module_xyz" in result.stderr


def test_a_bad_alert_setting_stops_start_up_naming_it(base_env):
    result = flask_cli({**base_env, "EVENTFLOW_ALERT_FORMAT": "teams"}, "alerts", "evaluate")
    assert result.returncode != 0
    assert "configuration error: EVENTFLOW_ALERT_FORMAT must be json or slack" in result.stderr
    assert "Traceback" not in result.stderr
