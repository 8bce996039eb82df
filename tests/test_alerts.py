"""Alerts (CONTRACT section 11): each rule is POSTed to the webhook once when it fires and once
when it resolves, signed; a failing receiver is retried; GET /alerts and every dashboard page
show what fires. A real receiver (http.server on a free port), real workers and PostgreSQL."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import timedelta
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import insert, select

from eventflow import alerts
from eventflow.alert_webhook import post_notice
from eventflow.extensions import db
from eventflow.models import AlertState, Event, Status, utcnow
from tests.conftest import bearer
from tests.pipeline import ingest
from tests.processes import flask_cli, wait_for
from tests.test_dashboard_views import log_in

SECRET = "webhook-secret"
RULES = set(alerts.RULES)


@dataclass
class Receiver:
    """A webhook receiver: answers the scripted statuses first, then 200; keeps every request."""

    url: str
    statuses: list[int] = field(default_factory=list)
    requests: list[tuple[int, Message, bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def delivered(self) -> list[dict]:
        """The bodies it answered 2xx to, in order."""
        with self.lock:
            return [json.loads(body) for status, _, body in self.requests if status == 200]

    def notices(self, rule: str) -> list[str]:
        return [n["state"] for n in self.delivered() if n.get("alert") == rule]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    box: list[Receiver] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            rec = box[0]
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with rec.lock:
                status = rec.statuses.pop(0) if rec.statuses else 200
                rec.requests.append((status, self.headers, body))
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    box.append(Receiver(f"http://127.0.0.1:{server.server_port}/hook"))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield box[0]
    server.shutdown()
    server.server_close()


def alert_env(receiver: Receiver, **tuned: str) -> dict[str, str]:
    return {
        "EVENTFLOW_ALERT_WEBHOOK_URL": receiver.url,
        "EVENTFLOW_ALERT_WEBHOOK_SECRET": SECRET,
        "EVENTFLOW_ALERT_DLQ_SIZE": "1",
        "EVENTFLOW_ALERT_OLDEST_PENDING_SECONDS": "1.5",
        "EVENTFLOW_ALERT_NO_WORKER_SECONDS": "5",
        "EVENTFLOW_PUBLIC_URL": "https://events.example",
        **tuned,
    }


def evaluated_after(app, moment) -> bool:
    with app.app_context():
        at = db.session.scalar(
            select(AlertState.evaluated_at).where(AlertState.rule == alerts.DLQ_SIZE)
        )
        db.session.rollback()
    return at is not None and at > moment


def seed_failed(app, owner, n: int) -> None:
    with app.app_context():
        rows = [
            {"id": uuid.uuid4(), "user_id": owner.id, "type": "OLD", "payload": {}}
            for _ in range(n)
        ]
        db.session.execute(insert(Event), [{**r, "status": Status.FAILED.value} for r in rows])
        db.session.commit()


def test_each_rule_fires_once_and_resolves_once_with_a_valid_signature(
    app, client, admin_auth, start_worker, receiver, base_env, tmp_path
):
    env = {**alert_env(receiver), "EVENTFLOW_MAX_ATTEMPTS": "1"}
    # No worker yet, one event waiting longer than the threshold: cron's evaluation says so.
    waiting = ingest(client, admin_auth, "TEST_OK", {})
    wait_for(lambda: (utcnow() - created_at(app, waiting)).total_seconds() > 1.6)
    flask_cli({**base_env, **env}, "alerts", "evaluate", check=True)
    assert receiver.notices(alerts.NO_WORKERS) == ["firing"]
    assert receiver.notices(alerts.OLDEST_PENDING) == ["firing"]

    # A worker: both resolve. Two events fail into the DLQ (over 1) as a new error group.
    toggle = tmp_path / "toggle"
    toggle.write_text("on")
    start_worker("--workers", "2", **env)
    for _ in range(2):
        ingest(client, admin_auth, "TEST_TOGGLE", {"fail_while": str(toggle)})
    wait_for(lambda: receiver.notices(alerts.DLQ_SIZE) == ["firing"], message="DLQ firing")
    wait_for(lambda: receiver.notices(alerts.NEW_ERROR_GROUP) == ["firing", "resolved"])

    # The handler is fixed and the DLQ replayed: the DLQ rule resolves.
    toggle.unlink()
    assert client.post("/api/v1/dlq/replay", json={}, headers=admin_auth).status_code == 202
    wait_for(lambda: receiver.notices(alerts.DLQ_SIZE) == ["firing", "resolved"], message="DLQ")
    wait_for(lambda: receiver.notices(alerts.NO_WORKERS) == ["firing", "resolved"])
    wait_for(lambda: receiver.notices(alerts.OLDEST_PENDING) == ["firing", "resolved"])
    settled = utcnow()
    wait_for(lambda: evaluated_after(app, settled + timedelta(seconds=1)), message="2 more passes")

    for rule in RULES:
        assert receiver.notices(rule) == ["firing", "resolved"], rule
    for _status, headers, body in receiver.requests:
        expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers["X-EventFlow-Signature"], expected)
    by_rule = {(n["alert"], n["state"]): n for n in receiver.delivered()}
    dlq = by_rule[alerts.DLQ_SIZE, "firing"]
    assert dlq["value"] == 2 and dlq["threshold"] == 1
    assert dlq["dashboard_url"] == "https://events.example/dashboard/dlq"
    assert by_rule[alerts.DLQ_SIZE, "resolved"]["value"] == 0
    assert by_rule[alerts.DLQ_SIZE, "resolved"]["since"] == dlq["since"]
    assert by_rule[alerts.NO_WORKERS, "firing"]["value"] is None
    group = by_rule[alerts.NEW_ERROR_GROUP, "firing"]["value"]
    assert group["exception"] == "RuntimeError" and isinstance(group["id"], int)
    assert by_rule[alerts.OLDEST_PENDING, "firing"]["value"] > 1.5


def created_at(app, event_id: str):
    with app.app_context():
        at = db.session.get(Event, uuid.UUID(event_id)).created_at
        db.session.rollback()
    return at


def test_a_receiver_answering_500_twice_gets_the_notice_once_and_again_after_repeat(
    app, make_user, start_worker, receiver
):
    receiver.statuses[:] = [500, 500]
    seed_failed(app, make_user(), 1)
    env = alert_env(receiver, EVENTFLOW_ALERT_DLQ_SIZE="0", EVENTFLOW_ALERT_REPEAT_SECONDS="2")
    start_worker("--workers", "1", **env)
    wait_for(lambda: len(receiver.notices(alerts.DLQ_SIZE)) == 2, message="a repeat")
    with receiver.lock:
        statuses = [status for status, _, _ in receiver.requests]
        bodies = [body for _, _, body in receiver.requests]
    assert statuses[:3] == [500, 500, 200]
    assert bodies[0] == bodies[1] == bodies[2]  # the same notice, tried three times
    first, repeat = [n for n in receiver.delivered() if n["alert"] == alerts.DLQ_SIZE][:2]
    assert first["state"] == repeat["state"] == "firing"
    assert first["since"] == repeat["since"]


def test_slack_format_posts_text_and_blocks(app, receiver):
    settings = replace(
        app.config["EVENTFLOW"], alert_webhook_url=receiver.url, alert_format="slack"
    )
    notice = alerts.notice_body(settings, alerts.DLQ_SIZE, "firing", 150, 100.0, utcnow(), "/dlq")
    post_notice(settings, notice)
    (body,) = receiver.delivered()
    assert set(body) == {"text", "blocks"}
    assert body["text"] == "[FIRING] dlq_size: 150 (threshold 100)"
    section = body["blocks"][0]
    assert section["type"] == "section" and section["text"]["type"] == "mrkdwn"
    assert "http://127.0.0.1:5000/dashboard/dlq" in section["text"]["text"]
    group = {"id": 7, "exception": "KeyError"}
    post_notice(
        settings, alerts.notice_body(settings, "new_error_group", "firing", group, None, None, "")
    )
    assert receiver.delivered()[1]["text"] == "[FIRING] new_error_group: KeyError (group 7)"


def test_get_alerts_lists_every_rule_for_admins_and_viewers(app, client, make_user):
    seed_failed(app, make_user(), 3)
    with app.app_context():
        alerts.evaluate_alerts(replace(app.config["EVENTFLOW"], alert_dlq_size=2))
    viewer = make_user(role="viewer")
    response = client.get("/api/v1/alerts", headers=bearer(client, viewer.email))
    assert response.status_code == 200
    rows = {row["alert"]: row for row in response.get_json()["alerts"]}
    assert set(rows) == RULES
    assert rows["dlq_size"]["state"] == "firing"
    assert rows["dlq_size"]["value"] == 3 and rows["dlq_size"]["threshold"] == 2
    assert rows["dlq_size"]["since"].endswith("Z")
    assert rows["oldest_pending_seconds"]["state"] == "ok"
    assert rows["new_error_group"]["state"] == "ok"
    user = make_user()
    forbidden = client.get("/api/v1/alerts", headers=bearer(client, user.email))
    assert forbidden.status_code == 403
    assert forbidden.get_json()["error"]["code"] == "forbidden"


def test_every_dashboard_page_shows_firing_alerts_until_they_resolve(app, client, make_user):
    owner = make_user(admin=True)
    seed_failed(app, owner, 3)
    settings = replace(app.config["EVENTFLOW"], alert_dlq_size=2)
    with app.app_context():
        alerts.evaluate_alerts(settings)
    assert log_in(client, owner.email).status_code == 302
    for page in ("/dashboard/", "/dashboard/events", "/dashboard/errors"):
        html = client.get(page).get_data(as_text=True)
        assert "Alert firing: <strong>dlq_size</strong>" in html, page
        assert "3 (threshold 2)" in html
    with app.app_context():
        alerts.evaluate_alerts(replace(settings, alert_dlq_size=10))
    html = client.get("/dashboard/").get_data(as_text=True)
    assert "Alert firing: <strong>dlq_size</strong>" not in html
    assert "Alert firing: <strong>no_workers</strong>" in html  # none runs in this test
