"""Production web server settings. Socket.IO runs over WebSocket in threaded workers.

`gunicorn -c gunicorn.conf.py wsgi:app`; PORT picks the port, GUNICORN_WORKERS and
GUNICORN_THREADS the size. With more than one worker, the dashboard's Socket.IO client uses
WebSocket only, so no sticky sessions are needed (see README).
"""

import os

bind = os.environ.get("GUNICORN_BIND", f"127.0.0.1:{os.environ.get('PORT', '5000')}")
workers = int(os.environ.get("GUNICORN_WORKERS", "2"))
threads = int(os.environ.get("GUNICORN_THREADS", "32"))
worker_class = "gthread"
keepalive = 5
timeout = 60
graceful_timeout = 20
accesslog = os.environ.get("GUNICORN_ACCESS_LOG")  # "-" for stdout; off by default for speed
errorlog = "-"
