"""Live stats for the dashboard: the `/dashboard` Socket.IO namespace and its broadcaster.

Admins connect to the namespace (session cookie or `auth: {token}`); one `stats` event a
second reaches all of them, whatever their number and however many web processes serve them:

* Each web process has at most one broadcaster task, started by its first viewer; it runs
  one snapshot query per tick for all viewers, never one per client.
* With Redis, every process's emit reaches every process's clients through the message queue,
  so N broadcasting processes would send N copies. The processes that have viewers therefore
  compete for a short Redis lease (SET NX PX, renewed every tick); only its holder queries and
  emits. If the holder dies, its lease expires and another process takes over within LEASE_MS.
* Without Redis (embedded mode) there is no message queue: a process's emit reaches only its
  own clients, and the lease lives in the process's own memory (backend.LocalState), so the
  single web process always holds it and broadcasts to them.
* A viewer gets the chart's five minutes once, in its first `stats` (`history`: one list per
  metric, about 5 KB rather than 28 KB as one object per second); every later `stats` carries
  the current values and one new chart point (CONTRACT section 9: at most 2 KB). New viewers
  wait in a shared set (Redis; memory without it) that the broadcaster empties at its next tick.
  It sends them that tick with the history, then adds them to the room the ticks go to: both
  travel the one message queue in order, so no tick overtakes the history and none is missed.
* An Engine.IO connection that has not joined `/dashboard` as an admin within
  `socket_auth_timeout_seconds` is closed by its process (`AuthDeadline`), so idle
  unauthenticated WebSockets cannot pile up.
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, request
from flask_socketio import Namespace, SocketIO
from socketio.exceptions import ConnectionRefusedError

from ..backend import SharedState
from ..stats import pack_series, snapshot
from ..tasks.queue import get_queue
from .access import session_user, token_staff

logger = logging.getLogger(__name__)
WSGIEnviron = dict[str, Any]

NAMESPACE = "/dashboard"
STATS_EVENT = "stats"
INTERVAL_SECONDS = 1.0
# Ticks land just after each wall-clock second, when the second that just ended is complete in
# the per-second counters: a change shows up on the next tick, about a second later at most.
TICK_OFFSET_SECONDS = 0.05
LEASE_KEY = "eventflow:dashboard:broadcaster"
LEASE_MS = 3000
VIEWERS_ROOM = "viewers"  # welcomed viewers: each tick goes to this room
NEWCOMERS_KEY = "eventflow:dashboard:newcomers"
NEWCOMERS_TTL_MS = 60_000  # a set nobody adds to for this long is stale (its viewers left)
CONNECTING_POLL_SECONDS = 0.01


def server_of(socketio: SocketIO) -> Any:
    """The python-socketio server under Flask-SocketIO (untyped; its stubs leave it out)."""
    return socketio.server  # type: ignore[attr-defined]


def _client_sid() -> str:
    """The Socket.IO session of the client whose event this is."""
    sid: str = request.sid  # type: ignore[attr-defined]  # set on the request by Flask-SocketIO
    return sid


def socketio_channel(redis_url: str | None) -> str:
    """The Socket.IO pub/sub channel for this Redis database.

    Redis pub/sub ignores the database number, so two deployments (or test runs) on one Redis
    server would otherwise receive each other's dashboard broadcasts.
    """
    database = (urlsplit(redis_url).path.strip("/") or "0") if redis_url else "0"
    return f"eventflow-socketio-db{database}"


class BroadcastLease:
    """A shared key naming the one process that broadcasts; renewed by its holder each tick."""

    def __init__(
        self, shared: SharedState, owner: str, key: str = LEASE_KEY, ttl_ms: int = LEASE_MS
    ):
        self.shared = shared
        self.owner = owner
        self.key = key
        self.ttl_ms = ttl_ms

    def hold(self) -> bool:
        """Take or renew the lease; True while this owner holds it."""
        return self.shared.hold(self.key, self.owner, self.ttl_ms)

    def release(self) -> None:
        """Give the lease up (only if held), so another process can take over at once."""
        self.shared.release(self.key, self.owner)


class Newcomers:
    """Viewers waiting for their first `stats` (the one with the chart history).

    Every web process adds its new viewers to one shared set, which the broadcaster (the lease
    holder, in any process) empties.
    """

    def __init__(self, shared: SharedState, key: str = NEWCOMERS_KEY):
        self.shared = shared
        self.key = key

    def add(self, sids: list[str]) -> None:
        """Put connected viewers in line for their welcome."""
        self.shared.add_members(self.key, sids, NEWCOMERS_TTL_MS)

    def waiting(self) -> list[str]:
        """The viewers in line, from every web process."""
        return self.shared.members(self.key)

    def welcomed(self, sids: list[str]) -> None:
        """Take viewers out of line once they have their history."""
        if sids:
            self.shared.remove_members(self.key, sids)


class StatsBroadcaster:
    """One task per process that emits `stats` while this process has viewers."""

    def __init__(
        self,
        app: Flask,
        socketio: SocketIO,
        shared: SharedState,
        interval: float = INTERVAL_SECONDS,
    ):
        self.app = app
        self.server = server_of(socketio)  # the server this app's namespace is registered on
        self.shared = shared
        self.interval = interval
        self._viewers: set[str] = set()
        self._unannounced: set[str] = set()  # viewers not yet added to the Newcomers
        self._lock = threading.Lock()
        self._has_viewers = threading.Event()
        self._arrived = threading.Event()
        self._pid: int | None = None
        self._failing = False  # log an outage once, not every second

    def add_viewer(self, sid: str) -> None:
        """An admin joined: serve this process's viewers, starting the task if need be."""
        with self._lock:
            self._viewers.add(sid)
            self._unannounced.add(sid)
            self._has_viewers.set()
            start = self._pid != os.getpid()  # also true in a child forked after a start
            self._pid = os.getpid()
        self._arrived.set()
        if start:
            self.server.start_background_task(self._run)

    def remove_viewer(self, sid: str) -> None:
        with self._lock:
            self._viewers.discard(sid)
            self._unannounced.discard(sid)
            if not self._viewers:
                self._has_viewers.clear()

    def _run(self) -> None:
        owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        lease, newcomers = BroadcastLease(self.shared, owner), Newcomers(self.shared)
        atexit.register(self._step_down, lease)  # a clean exit hands over at once
        while True:
            if not self._has_viewers.is_set():
                self._step_down(lease)
                self._has_viewers.wait()
            self._announce(newcomers)
            self.tick(lease, newcomers)
            self._wait_for_next_tick(newcomers)

    def _wait_for_next_tick(self, newcomers: Newcomers) -> None:
        """Sleep until just after the next wall-clock second, announcing viewers who arrive."""
        now = time.time()
        next_tick = (now // self.interval + 1) * self.interval + TICK_OFFSET_SECONDS
        connecting = False
        while (left := next_tick - time.time()) > 0:
            if connecting:
                time.sleep(min(left, CONNECTING_POLL_SECONDS))
            elif self._arrived.wait(left):
                self._arrived.clear()
            connecting = self._announce(newcomers)

    def _announce(self, newcomers: Newcomers) -> bool:
        """Put this process's connected new viewers in line for their welcome.

        True while some are still connecting: on_connect runs before the client is told it is
        in, and a welcome sent before that would reach it ahead of its own acknowledgement.
        """
        with self._lock:
            arrived = list(self._unannounced)
        ready = [sid for sid in arrived if self.server.manager.is_connected(sid, NAMESPACE)]
        if ready:
            try:
                newcomers.add(ready)
            except Exception:  # Redis is down: tick() reports it; they are announced again
                return False
            with self._lock:
                self._unannounced.difference_update(ready)
        return len(ready) < len(arrived)

    def tick(self, lease: BroadcastLease, newcomers: Newcomers) -> bool:
        """Emit one snapshot if this process is the broadcaster; True when it emitted."""
        try:
            if not lease.hold():
                return False
            waiting = newcomers.waiting()
            with self.app.app_context():
                payload = snapshot(get_queue().stats, history=bool(waiting))
            if waiting:
                series = payload.pop("series")
                self._welcome(waiting, {**payload, "history": pack_series(series)})
            self.server.emit(
                STATS_EVENT, payload, to=VIEWERS_ROOM, skip_sid=waiting, namespace=NAMESPACE
            )
            newcomers.welcomed(waiting)
        except Exception:  # a database or Redis outage must not end the live feed
            if not self._failing:
                logger.warning("dashboard stats broadcast failing", exc_info=True)
            self._failing = True
            return False
        if self._failing:
            logger.warning("dashboard stats broadcast recovered")
            self._failing = False
        return True

    def _welcome(self, sids: list[str], payload: dict[str, Any]) -> None:
        """Send new viewers this tick with the chart history, then make them viewers of the rest.

        Through the message queue these reach the viewers' processes in this order, before the
        tick that follows, whichever process holds them.
        """
        self.server.emit(STATS_EVENT, payload, to=sids, namespace=NAMESPACE)
        for sid in sids:
            try:
                self.server.enter_room(sid, VIEWERS_ROOM, namespace=NAMESPACE)
            except (KeyError, ValueError):
                pass  # left before its welcome (embedded mode: a local room refuses it)

    def _step_down(self, lease: BroadcastLease) -> None:
        try:
            lease.release()
        except Exception:
            logger.warning("could not release the dashboard broadcast lease", exc_info=True)


class AuthDeadline:
    """Closes this process's Engine.IO connections that are not an admin viewer in time.

    Every Engine.IO connection is watched from its handshake until it joins `/dashboard` as an
    admin; one that is still unauthenticated after `timeout` seconds (never joined, refused, or
    left the namespace) is closed. A WebSocket lives in the process that accepted it, so each
    process watches its own, with one task started by its first connection.
    """

    def __init__(self, socketio: SocketIO, timeout: float):
        self.server = server_of(socketio)
        self.timeout = timeout
        self._due: dict[str, float] = {}  # eio sid -> deadline; insertion order is due order
        self._lock = threading.Lock()
        self._pid: int | None = None

    def install(self) -> None:
        """Watch every Engine.IO connection of the server, around python-socketio's handlers."""
        eio = self.server.eio
        on_open, on_close = eio.handlers["connect"], eio.handlers["disconnect"]

        def opened(eio_sid: str, environ: WSGIEnviron) -> object:
            accepted: object = on_open(eio_sid, environ)
            self.watch(eio_sid)
            return accepted

        def closed(eio_sid: str, reason: object = None) -> None:
            on_close(eio_sid, reason)  # leaves the namespaces first, which may watch it again
            self.forget(eio_sid)

        eio.on("connect", opened)
        eio.on("disconnect", closed)

    def watch(self, eio_sid: str) -> None:
        """Close this connection unless it authenticates within the timeout."""
        with self._lock:
            start = self._pid != os.getpid()  # also true in a child forked after a start
            if start:
                self._pid = os.getpid()
                self._due.clear()  # a parent's connections are not this process's
            self._due.pop(eio_sid, None)
            self._due[eio_sid] = time.monotonic() + self.timeout
        if start:
            self.server.start_background_task(self._run)

    def forget(self, eio_sid: str) -> None:
        """The connection authenticated, or is gone."""
        with self._lock:
            self._due.pop(eio_sid, None)

    def _run(self) -> None:
        while True:
            with self._lock:
                now = time.monotonic()
                overdue = []
                for eio_sid, due in self._due.items():
                    if due > now:
                        break
                    overdue.append(eio_sid)
                for eio_sid in overdue:
                    del self._due[eio_sid]
                # A connection watched later is due later than all of these.
                next_due = next(iter(self._due.values()), now + self.timeout)
            for eio_sid in overdue:
                self._close(eio_sid)
            time.sleep(max(0.0, next_due - time.monotonic()))

    def _close(self, eio_sid: str) -> None:
        connection = self.server.eio.sockets.get(eio_sid)
        if connection is None:
            return
        try:
            # Not eio.disconnect(): it waits until the client has read its last packets,
            # which a client that never reads would make forever.
            connection.close(wait=False, reason=self.server.eio.reason.SERVER_DISCONNECT)
        except Exception:
            logger.warning("could not close an unauthenticated connection", exc_info=True)


class DashboardNamespace(Namespace):
    """`/dashboard`: admins and viewers; connecting makes this process's broadcaster serve them."""

    def __init__(self, broadcaster: StatsBroadcaster, deadline: AuthDeadline):
        super().__init__(NAMESPACE)
        self.broadcaster = broadcaster
        self.deadline = deadline

    def on_connect(self, auth: object = None) -> None:
        token = auth.get("token") if isinstance(auth, dict) else None
        allowed = token_staff(token) is not None if token else session_user() is not None
        if not allowed:
            # python-socketio's ConnectionRefusedError (not the builtin) tells the client why.
            raise ConnectionRefusedError("admins and viewers only")
        eio_sid = self._eio_sid()
        if eio_sid is not None:
            self.deadline.forget(eio_sid)
        self.broadcaster.add_viewer(_client_sid())

    def on_disconnect(self, reason: object = None) -> None:
        self.broadcaster.remove_viewer(_client_sid())
        # Leaving the namespace may keep the connection open: it is unauthenticated again.
        # (When the connection itself closes, AuthDeadline forgets it right after this.)
        eio_sid = self._eio_sid()
        if eio_sid is not None:
            self.deadline.watch(eio_sid)

    def _eio_sid(self) -> str | None:
        """The Engine.IO connection under this client's namespace session."""
        eio_sid: str | None = self.deadline.server.manager.eio_sid_from_sid(
            _client_sid(), NAMESPACE
        )
        return eio_sid


def register_live_stats(app: Flask, socketio: SocketIO, shared: SharedState) -> StatsBroadcaster:
    """Register the `/dashboard` namespace on the app's Socket.IO server (after init_app).

    `shared` is the backend's state shared by the web processes: the lease and the newcomers.
    """
    deadline = AuthDeadline(socketio, app.config["EVENTFLOW"].socket_auth_timeout_seconds)
    deadline.install()
    broadcaster = StatsBroadcaster(app, socketio, shared)
    socketio.on_namespace(DashboardNamespace(broadcaster, deadline))
    return broadcaster
