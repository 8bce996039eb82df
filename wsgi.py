"""Entry point for gunicorn (`wsgi:app`) and the flask CLI (`flask --app wsgi ...`)."""

import os
import sys

from eventflow import create_app
from eventflow.config import ConfigError
from eventflow.logs import configuration_error_line

# gunicorn stops (rather than restarting workers forever) when a worker exits with this code.
APP_LOAD_ERROR = 4

try:
    app = create_app()
except ConfigError as exc:
    print(configuration_error_line(exc, os.environ), file=sys.stderr)
    sys.exit(APP_LOAD_ERROR)
