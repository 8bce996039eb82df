"""Production web server settings. Socket.IO runs over WebSocket in threaded workers.

`gunicorn -c gunicorn.conf.py wsgi:app`; PORT picks the port (GUNICORN_BIND, e.g. 0.0.0.0:5000,
overrides the whole address), GUNICORN_WORKERS and GUNICORN_THREADS the size. With more than one
worker, the dashboard's Socket.IO client uses WebSocket only, so no sticky sessions are needed
(see README).

Why gthread: Socket.IO's WebSocket needs it, and it keeps client connections alive, which made
it cheaper per request than sync workers in bench/ingest.py (BENCHMARKS.md).
"""

import os

bind = os.environ.get("GUNICORN_BIND", f"127.0.0.1:{os.environ.get('PORT', '5000')}")
workers = int(os.environ.get("GUNICORN_WORKERS", "2"))
# At most the app's SQLAlchemy pool (pool_size 16): more busy threads than pooled connections
# open and close a PostgreSQL connection per request (measured: 18 new sessions/s at 32 threads
# against a pool of 10). Each open dashboard WebSocket holds one thread.
threads = int(os.environ.get("GUNICORN_THREADS", "16"))
worker_class = "gthread"
keepalive = 5
timeout = 60
graceful_timeout = 20
accesslog = os.environ.get("GUNICORN_ACCESS_LOG")  # "-" for stdout; off by default for speed
errorlog = "-"
# gunicorn 27's control socket defaults to one path per user: several servers on one machine
# (tests, benchmarks, make run) would take it from each other.
control_socket_disable = True
