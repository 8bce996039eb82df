"""Live stats for the dashboard: the `/dashboard` Socket.IO namespace and its broadcaster.

Admins connect to the namespace (session cookie or `auth: {token}`); one `stats` event a
second reaches all of them, whatever their number and however many web processes serve them:

* Each web process has at most one broadcaster thread, started by its first viewer; it runs
  one snapshot query per tick for all viewers, never one per client.
* With Redis, every process's emit reaches every process's clients through the message queue,
  so N broadcasting processes would send N copies. The processes that have viewers therefore
  compete for a short Redis lease (SET NX PX, renewed every tick); only its holder queries and
  emits. If the holder dies, its lease expires and another process takes over within LEASE_MS.
* Without Redis (embedded mode) there is no message queue: a process's emit reaches only its
  own clients, so the single web process broadcasts to them without a lease.
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import threading
import time
import uuid
from urllib.parse import urlsplit

from flask import Flask, request
from flask_socketio import ConnectionRefusedError, Namespace, SocketIO

from ..stats import snapshot
from ..tasks.queue import get_queue
from .access import session_admin, token_admin

logger = logging.getLogger(__name__)

NAMESPACE = "/dashboard"
STATS_EVENT = "stats"
INTERVAL_SECONDS = 1.0
# Ticks land just after each wall-clock second, when the second that just ended is complete in
# the per-second counters: a change shows up on the next tick, about a second later at most.
TICK_OFFSET_SECONDS = 0.05
LEASE_KEY = "eventflow:dashboard:broadcaster"
LEASE_MS = 3000

# Take the lease if it is free, or extend it if we hold it: one atomic step.
_HOLD_SCRIPT = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
if redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
return 0
"""
_RELEASE_SCRIPT = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


def socketio_channel(redis_url: str | None) -> str:
    """The Socket.IO pub/sub channel for this Redis database.

    Redis pub/sub ignores the database number, so two deployments (or test runs) on one Redis
    server would otherwise receive each other's dashboard broadcasts.
    """
    database = (urlsplit(redis_url).path.strip("/") or "0") if redis_url else "0"
    return f"eventflow-socketio-db{database}"


class BroadcastLease:
    """A Redis key naming the one process that broadcasts; renewed by its holder each tick."""

    def __init__(self, redis, owner: str, key: str = LEASE_KEY, ttl_ms: int = LEASE_MS):
        self.owner = owner
        self.key = key
        self.ttl_ms = ttl_ms
        self._hold = redis.register_script(_HOLD_SCRIPT)
        self._release = redis.register_script(_RELEASE_SCRIPT)

    def hold(self) -> bool:
        """Take or renew the lease; True while this owner holds it."""
        return bool(self._hold(keys=[self.key], args=[self.owner, self.ttl_ms]))

    def release(self) -> None:
        """Give the lease up (only if held), so another process can take over at once."""
        self._release(keys=[self.key], args=[self.owner])


class StatsBroadcaster:
    """One thread per process that emits `stats` while this process has viewers."""

    def __init__(self, app: Flask, socketio: SocketIO, interval: float = INTERVAL_SECONDS):
        self.app = app
        self.server = socketio.server  # the server this app's namespace is registered on
        self.interval = interval
        self._viewers: set[str] = set()
        self._lock = threading.Lock()
        self._has_viewers = threading.Event()
        self._pid: int | None = None
        self._failing = False  # log an outage once, not every second

    def add_viewer(self, sid: str) -> None:
        with self._lock:
            self._viewers.add(sid)
            self._has_viewers.set()
            start = self._pid != os.getpid()  # also true in a child forked after a start
            self._pid = os.getpid()
        if start:
            self.server.start_background_task(self._run)

    def remove_viewer(self, sid: str) -> None:
        with self._lock:
            self._viewers.discard(sid)
            if not self._viewers:
                self._has_viewers.clear()

    def _new_lease(self) -> BroadcastLease | None:
        with self.app.app_context():
            redis = get_queue().redis
        if redis is None:
            return None  # embedded mode: no message queue, so this process serves its own
        owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        return BroadcastLease(redis, owner)

    def _run(self) -> None:
        lease = self._new_lease()
        if lease is not None:
            atexit.register(self._step_down, lease)  # a clean exit hands over at once
        while True:
            if not self._has_viewers.is_set():
                self._step_down(lease)
                self._has_viewers.wait()
            self.tick(lease)
            now = time.time()
            next_tick = (now // self.interval + 1) * self.interval + TICK_OFFSET_SECONDS
            time.sleep(max(0.0, next_tick - now))

    def tick(self, lease: BroadcastLease | None) -> bool:
        """Emit one snapshot if this process is the broadcaster; True when it emitted."""
        try:
            if lease is not None and not lease.hold():
                return False
            with self.app.app_context():
                payload = snapshot(get_queue().stats)
            self.server.emit(STATS_EVENT, payload, namespace=NAMESPACE)
        except Exception:  # a database or Redis outage must not end the live feed
            if not self._failing:
                logger.warning("dashboard stats broadcast failing", exc_info=True)
            self._failing = True
            return False
        if self._failing:
            logger.warning("dashboard stats broadcast recovered")
            self._failing = False
        return True

    def _step_down(self, lease: BroadcastLease | None) -> None:
        if lease is None:
            return
        try:
            lease.release()
        except Exception:
            logger.warning("could not release the dashboard broadcast lease", exc_info=True)


class DashboardNamespace(Namespace):
    """`/dashboard`: admins only; connecting makes this process's broadcaster serve them."""

    def __init__(self, broadcaster: StatsBroadcaster):
        super().__init__(NAMESPACE)
        self.broadcaster = broadcaster

    def on_connect(self, auth=None):
        token = auth.get("token") if isinstance(auth, dict) else None
        allowed = token_admin(token) is not None if token else session_admin() is not None
        if not allowed:
            # python-socketio's ConnectionRefusedError (not the builtin) tells the client why.
            raise ConnectionRefusedError("admins only")
        self.broadcaster.add_viewer(request.sid)

    def on_disconnect(self, reason=None):
        self.broadcaster.remove_viewer(request.sid)


def register_live_stats(app: Flask, socketio: SocketIO) -> StatsBroadcaster:
    """Register the `/dashboard` namespace on the app's Socket.IO server (after init_app)."""
    broadcaster = StatsBroadcaster(app, socketio)
    socketio.on_namespace(DashboardNamespace(broadcaster))
    return broadcaster
