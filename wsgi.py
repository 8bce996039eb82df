"""Entry point for gunicorn (`wsgi:app`) and the flask CLI (`flask --app wsgi ...`)."""

import sys

from eventflow import create_app
from eventflow.config import ConfigError

# gunicorn stops (rather than restarting workers forever) when a worker exits with this code.
APP_LOAD_ERROR = 4

try:
    app = create_app()
except ConfigError as exc:
    print(f"eventflow: configuration error: {exc}", file=sys.stderr)
    sys.exit(APP_LOAD_ERROR)
