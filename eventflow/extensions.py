"""Extensions, created unbound here and bound to the app in create_app().

Only those that keep their per-app state in the app: Flask-SQLAlchemy and Flask-Migrate do.
JWTManager, CSRFProtect and SocketIO keep theirs in the extension object, so create_app makes
one of each per app. The limiter is the exception (see eventflow/security.py): its limits are
decorators bound to views at import, so one Limiter serves every app of a process.
"""

from flask import current_app
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import Engine
from sqlalchemy.orm import DeclarativeBase


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)
migrate = Migrate()
# Storage, key prefix and failure handling are set by eventflow.security.init_security.
limiter = Limiter(key_func=get_remote_address)


INGEST_ENGINE_KEY = "eventflow.ingest_engine"


def ingest_engine() -> Engine:
    """The ingest hot path's engine: autocommit connections, created in create_app().

    A separate engine rather than `isolation_level` per connection: the pool would reset that
    option at check-in, and on a connection PostgreSQL has dropped the reset raises outside
    SQLAlchemy's error handling (a 500 instead of a 503) and loses the pool slot.
    """
    engine: Engine = current_app.extensions[INGEST_ENGINE_KEY]
    return engine
