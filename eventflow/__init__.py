"""EventFlow: event ingestion over a JWT-protected JSON API, processed by Huey workers."""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

from flask import Flask, redirect, url_for
from sqlalchemy import Engine, create_engine
from sqlalchemy import event as sa_event

from .config import Settings, load_settings

MAX_BODY_BYTES = 1024 * 1024


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    # WAL lets the web process read while the worker writes; the busy timeout waits out locks.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _flask_config(settings: Settings) -> dict[str, Any]:
    if settings.database_url.startswith("sqlite"):
        engine_options: dict[str, Any] = {"connect_args": {"timeout": 30}}
    else:
        # No pre-ping: it would cost a round trip per request. After a PostgreSQL restart the
        # first query on a stale connection fails (503), and SQLAlchemy then replaces the pool.
        engine_options = {"pool_size": 8, "max_overflow": 8, "pool_recycle": 1800}
    return {
        "SECRET_KEY": settings.secret_key,
        "JWT_SECRET_KEY": settings.jwt_secret_key,
        "JWT_ALGORITHM": "HS256",
        "JWT_DECODE_ALGORITHMS": ["HS256"],
        "JWT_ACCESS_TOKEN_EXPIRES": timedelta(seconds=settings.jwt_access_token_expires),
        "JWT_TOKEN_LOCATION": ["headers"],
        "SQLALCHEMY_DATABASE_URI": settings.database_url,
        "SQLALCHEMY_ENGINE_OPTIONS": engine_options,
        "MAX_CONTENT_LENGTH": MAX_BODY_BYTES,
        "JSON_SORT_KEYS": False,
        "SESSION_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SAMESITE": "Lax",
        "SESSION_COOKIE_SECURE": settings.env == "production",
        "PERMANENT_SESSION_LIFETIME": timedelta(seconds=settings.session_max_seconds),
        "WTF_CSRF_TIME_LIMIT": None,
        "EVENTFLOW": settings,
    }


def _ingest_engine(settings: Settings) -> Engine:
    """Autocommit connections for ingest: one INSERT is one round trip and commits on return."""
    if settings.database_url.startswith("sqlite"):
        return create_engine(
            settings.database_url, isolation_level="AUTOCOMMIT", connect_args={"timeout": 30}
        )
    # Its own pool, sized like the app's (the two together stay within 32 per process).
    return create_engine(
        settings.database_url,
        isolation_level="AUTOCOMMIT",
        pool_size=16,
        max_overflow=0,
        pool_recycle=1800,
    )


def _async_mode() -> str:
    """gevent inside gunicorn's gevent worker (which monkey-patches first), threads elsewhere."""
    try:
        from gevent import monkey
    except ImportError:  # pragma: no cover - gevent is a pinned dependency
        return "threading"
    return "gevent" if monkey.is_module_patched("socket") else "threading"


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app: settings -> extensions -> queue -> blueprints -> CLI -> error handlers.

    `test_config` overrides: string values are environment settings (e.g. DATABASE_URL) laid
    over os.environ; other values (e.g. TESTING=True) are Flask config keys, applied last.
    """
    overrides = dict(test_config or {})
    env = {**os.environ, **{k: v for k, v in overrides.items() if isinstance(v, str)}}
    app = Flask(
        __name__,
        instance_path=env.get("EVENTFLOW_INSTANCE_PATH")
        or str(Path(__file__).resolve().parent.parent / "instance"),
        template_folder="../templates",
        static_folder="../static",
    )
    Path(app.instance_path).mkdir(parents=True, exist_ok=True)
    settings = load_settings(env, app.instance_path)
    app.config.update(_flask_config(settings))
    app.config.update({k: v for k, v in overrides.items() if not isinstance(v, str)})

    from .api.fast_ingest import install_fast_ingest
    from .dashboard.live import register_live_stats, socketio_channel
    from .errors import register_error_handlers, register_jwt_errors
    from .extensions import INGEST_ENGINE_KEY, csrf, db, jwt, migrate, socketio
    from .ingest import init_ingest
    from .request_log import install_request_log
    from .security import init_security
    from .tasks.queue import init_queue
    from .tasks.registry import load_handler_modules

    db.init_app(app)
    app.extensions[INGEST_ENGINE_KEY] = _ingest_engine(settings)
    if settings.database_url.startswith("sqlite"):
        with app.app_context():
            sa_event.listen(db.engine, "connect", _sqlite_pragmas)
        sa_event.listen(app.extensions[INGEST_ENGINE_KEY], "connect", _sqlite_pragmas)
    migrate.init_app(app, db, directory=str(Path(__file__).resolve().parent.parent / "migrations"))
    jwt.init_app(app)
    csrf.init_app(app)
    # Same-origin WebSockets only (the default): the dashboard authenticates by cookie.
    # One pub/sub channel per Redis database, as pub/sub ignores database numbers.
    socketio.init_app(
        app,
        message_queue=settings.redis_url,
        channel=socketio_channel(settings.redis_url),
        async_mode=_async_mode(),
        # The dashboard's client is WebSocket-only; long-polling would need sticky sessions.
        transports=["websocket"],
        logger=False,
        engineio_logger=False,
    )
    register_live_stats(app, socketio)
    load_handler_modules(settings.handlers)
    init_queue(app, settings)
    init_ingest(app, settings)
    install_fast_ingest(app)  # in front of Socket.IO's middleware and Flask, behind ProxyFix
    init_security(app, settings)  # after Socket.IO, so ProxyFix sees every request first
    install_request_log(app)  # outermost: every request gets its X-Request-ID and log line
    register_jwt_errors()

    from .api import bp as api_bp
    from .api.health import bp as health_bp
    from .api.metrics import bp as metrics_bp
    from .dashboard import bp as dashboard_bp

    csrf.exempt(api_bp)
    csrf.exempt(health_bp)
    app.register_blueprint(api_bp)
    app.register_blueprint(health_bp)
    app.register_blueprint(dashboard_bp)
    app.add_url_rule("/", "index", lambda: redirect(url_for("dashboard.overview")))
    app.register_blueprint(metrics_bp)

    from .cli import register_cli

    register_cli(app)
    register_error_handlers(app)
    return app
