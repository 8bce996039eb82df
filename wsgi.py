"""Entry point for gunicorn (`wsgi:app`) and the flask CLI (`flask --app wsgi ...`)."""

import sys

from eventflow import create_app
from eventflow.config import ConfigError

try:
    app = create_app()
except ConfigError as exc:
    sys.exit(f"eventflow: configuration error: {exc}")
