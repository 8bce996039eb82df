"""Production web server settings: gevent workers, so a WebSocket holds no request thread.

`gunicorn -c gunicorn.conf.py wsgi:app`; PORT picks the port (GUNICORN_BIND, e.g. 0.0.0.0:5000,
overrides the whole address), GUNICORN_WORKERS the number of processes. The dashboard's Socket.IO
client uses WebSocket only, so several workers need no sticky sessions (see README).

Why gevent (eventflow/server.Worker: gunicorn's gevent worker + cooperative psycopg2 + JSON for
errors gunicorn answers itself): with gthread workers every open WebSocket held one of a few
request threads, so a handful of idle sockets stalled the API; in gevent a socket is a greenlet.
It also took ingest from 786 to 1,233 events/s in bench/ingest.py (BENCHMARKS.md).
GUNICORN_WORKER_CLASS=gthread brings back the old shape for comparison only.
"""

import gc
import os
import resource

bind = os.environ.get("GUNICORN_BIND", f"127.0.0.1:{os.environ.get('PORT', '5000')}")
workers = int(os.environ.get("GUNICORN_WORKERS", "2"))
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "eventflow.server.Worker")
# Open connections per worker: idle dashboards and WebSockets cost a greenlet each.
worker_connections = int(os.environ.get("GUNICORN_WORKER_CONNECTIONS", "4096"))
threads = int(os.environ.get("GUNICORN_THREADS", "16"))  # gthread only
keepalive = 5
timeout = 60
graceful_timeout = 20
# A request line over 4 KiB or oversized headers are refused before Flask; eventflow.server
# answers them with the JSON error envelope.
limit_request_line = 4094
limit_request_field_size = 8190
# gunicorn would trust X-Forwarded-Proto from 127.0.0.1 on its own; EVENTFLOW_PROXY_HOPS alone
# decides which proxies the app believes (ProxyFix, eventflow/security.py).
forwarded_allow_ips = ""
# The app logs one line per request itself (eventflow/request_log.py), with its request id.
accesslog = os.environ.get("GUNICORN_ACCESS_LOG")  # "-" for stdout; off by default for speed
errorlog = "-"
# gunicorn's lines in the app's format (EVENTFLOW_LOG_FORMAT: json by default in production).
logger_class = "eventflow.server.Logger"
# gunicorn 27's control socket defaults to one path per user: several servers on one machine
# (tests, benchmarks, make run) would take it from each other.
control_socket_disable = True


def post_worker_init(worker):
    # What the app built at start-up lives as long as the worker: keep it out of the garbage
    # collector's scans (≈ 4 µs of every batched event, bench/ingest_batch.py).
    gc.freeze()


def worker_exit(server, worker):
    # What this process counted for the metrics history since its last flush (once a minute).
    from eventflow.tasks.history import flush_history

    flush_history(getattr(worker, "wsgi", None))


def on_starting(server):
    # Each connection is a file descriptor: let the workers have as many as they may accept.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = workers * worker_connections + 1024
    if soft < wanted:
        limit = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
