"""EventFlow: event ingestion over a JWT-protected JSON API, processed by Huey workers."""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from flask import Flask, redirect, url_for
from flask_jwt_extended import JWTManager
from flask_socketio import SocketIO
from flask_wtf import CSRFProtect
from sqlalchemy import Engine, create_engine

from .backend import BACKEND_KEY, Database, choose_backend
from .config import Settings, load_settings

MAX_BODY_BYTES = 1024 * 1024


def _flask_config(settings: Settings, database: Database) -> dict[str, Any]:
    return {
        "SECRET_KEY": settings.secret_key,
        "JWT_SECRET_KEY": settings.jwt_secret_key,
        "JWT_ALGORITHM": "HS256",
        "JWT_DECODE_ALGORITHMS": ["HS256"],
        "JWT_ACCESS_TOKEN_EXPIRES": timedelta(seconds=settings.jwt_access_token_expires),
        "JWT_TOKEN_LOCATION": ["headers"],
        "SQLALCHEMY_DATABASE_URI": settings.database_url,
        "SQLALCHEMY_ENGINE_OPTIONS": database.engine_options(),
        "MAX_CONTENT_LENGTH": MAX_BODY_BYTES,
        "JSON_SORT_KEYS": False,
        "SESSION_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SAMESITE": "Lax",
        "SESSION_COOKIE_SECURE": settings.env == "production",
        "PERMANENT_SESSION_LIFETIME": timedelta(seconds=settings.session_max_seconds),
        "WTF_CSRF_TIME_LIMIT": None,
        "EVENTFLOW": settings,
    }


def _ingest_engine(settings: Settings, database: Database) -> Engine:
    """Autocommit connections for ingest: one INSERT is one round trip and commits on return."""
    engine = create_engine(
        settings.database_url, isolation_level="AUTOCOMMIT", **database.ingest_engine_options()
    )
    database.prepare(engine)
    return engine


def _async_mode() -> Literal["gevent", "threading"]:
    """gevent inside gunicorn's gevent worker (which monkey-patches first), threads elsewhere."""
    try:
        from gevent import monkey
    except ImportError:  # pragma: no cover - gevent is a pinned dependency
        return "threading"
    return "gevent" if monkey.is_module_patched("socket") else "threading"


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app: settings -> backend -> extensions -> queue -> blueprints -> CLI -> errors.

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
    backend = choose_backend(settings)  # PostgreSQL + Redis, or the embedded SQLite default
    app.config.update(_flask_config(settings, backend.database))
    app.config.update({k: v for k, v in overrides.items() if not isinstance(v, str)})

    from .api.fast_ingest import install_fast_ingest
    from .dashboard.live import register_live_stats, socketio_channel
    from .errors import register_error_handlers, register_jwt_errors
    from .extensions import INGEST_ENGINE_KEY, db, migrate
    from .infrastructure import init_infrastructure
    from .ingest import init_ingest
    from .request_log import install_request_log
    from .security import init_security
    from .tasks.bulk import init_bulk_task
    from .tasks.queue import init_queue

    app.extensions[BACKEND_KEY] = backend
    init_infrastructure(app, backend)
    db.init_app(app)
    with app.app_context():
        backend.database.prepare(db.engine)
    app.extensions[INGEST_ENGINE_KEY] = _ingest_engine(settings, backend.database)
    migrate.init_app(app, db, directory=str(Path(__file__).resolve().parent.parent / "migrations"))
    # JWTManager, CSRFProtect and SocketIO each keep state of their own (the JWT error loaders,
    # CSRF exemptions, the Socket.IO server): one per app, so no two apps in a process share it.
    register_jwt_errors(JWTManager(app))
    csrf = CSRFProtect(app)
    # Same-origin WebSockets only (the default): the dashboard authenticates by cookie.
    # One pub/sub channel per Redis database, as pub/sub ignores database numbers.
    socketio = SocketIO(
        app,
        message_queue=settings.redis_url,
        channel=socketio_channel(settings.redis_url),
        async_mode=_async_mode(),
        # The dashboard's client is WebSocket-only; long-polling would need sticky sessions.
        # (An Engine.IO option, passed through; Flask-SocketIO's stubs list only its own.)
        transports=["websocket"],  # type: ignore[call-arg]
        logger=False,
        engineio_logger=False,
    )
    register_live_stats(app, socketio, backend.broker.shared)
    init_bulk_task(app, init_queue(app, settings, backend), settings)
    init_ingest(app, settings)
    install_fast_ingest(app)  # in front of Socket.IO's middleware and Flask, behind ProxyFix
    init_security(app, settings)  # after Socket.IO, so ProxyFix sees every request first
    install_request_log(app)  # outermost: every request gets its X-Request-ID and log line

    from .api import bp as api_bp
    from .api.docs import bp as docs_bp
    from .api.health import bp as health_bp
    from .api.metrics import bp as metrics_bp
    from .dashboard import bp as dashboard_bp

    csrf.exempt(api_bp)
    csrf.exempt(health_bp)
    app.register_blueprint(api_bp)
    app.register_blueprint(health_bp)
    app.register_blueprint(docs_bp)
    app.register_blueprint(dashboard_bp)
    app.add_url_rule("/", "index", lambda: redirect(url_for("dashboard.overview")))
    app.register_blueprint(metrics_bp)

    from .cli import register_cli

    register_cli(app)
    register_error_handlers(app)
    return app
