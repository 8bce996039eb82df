"""Post queued alert notices to the webhook: signed, in order, retried with backoff.

Notices wait in `alert_notices` (the outbox) until the receiver answers 2xx. A failing receiver
is tried again after a delay that doubles each time (from the recovery interval, capped at an
hour), up to MAX_TRIES, and nothing queued after it overtakes it, so a receiver never hears
"resolved" before "firing". One pass stops at the first failure, and every request has a short
timeout: a hung receiver costs the evaluator TIMEOUT_SECONDS per interval, not the interval.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import logging
import urllib.error
import urllib.request
from datetime import timedelta
from typing import Any

from sqlalchemy import select

from .config import Settings
from .extensions import db
from .models import AlertNotice, utcnow

logger = logging.getLogger(__name__)
TIMEOUT_SECONDS = 3.0
MAX_TRIES = 8
MAX_DELAY = timedelta(hours=1)
NOTICES_PER_PASS = 100
SIGNATURE_HEADER = "X-EventFlow-Signature"


class WebhookError(Exception):
    """The receiver did not take the notice (no answer, or not 2xx)."""


def slack_body(notice: dict[str, Any]) -> dict[str, Any]:
    """Slack's incoming-webhook body for a notice: a one-line text and one section block."""
    threshold = f" (threshold {notice['threshold']:g})" if notice["threshold"] is not None else ""
    value = notice["value"]
    if isinstance(value, dict):  # a new error group
        value = f"{value['exception']} (group {value['id']})"
    text = f"[{notice['state'].upper()}] {notice['alert']}: {value}{threshold}"
    since = f"\nsince {notice['since']}" if notice["since"] else ""
    markdown = f"*{text}*{since}\n<{notice['dashboard_url']}|Open the dashboard>"
    return {
        "text": text,
        "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": markdown}}],
    }


def sign(secret: str, body: bytes) -> str:
    """The X-EventFlow-Signature value: HMAC-SHA256 of the exact body sent."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def post_notice(settings: Settings, notice: dict[str, Any]) -> None:
    """POST one notice in the configured format; WebhookError unless the receiver says 2xx."""
    assert settings.alert_webhook_url is not None
    body = json.dumps(slack_body(notice) if settings.alert_format == "slack" else notice).encode()
    headers = {"Content-Type": "application/json", "User-Agent": "EventFlow-alerts"}
    if settings.alert_webhook_secret:
        headers[SIGNATURE_HEADER] = sign(settings.alert_webhook_secret, body)
    request = urllib.request.Request(settings.alert_webhook_url, body, headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
            response.read(1024)
    except (OSError, http.client.HTTPException) as exc:  # URLError and HTTPError are OSErrors
        raise WebhookError(str(exc)) from exc


def retry_delay(settings: Settings, attempts: int) -> timedelta:
    """How long to wait after the attempts-th failure: doubling from the recovery interval."""
    delay = timedelta(seconds=settings.recovery_interval_seconds * 2 ** (attempts - 1))
    return min(delay, MAX_DELAY)


def send_notices(settings: Settings) -> int:
    """Post the due notices, oldest first, until one fails; how many were delivered."""
    if not settings.alert_webhook_url:
        return 0
    notices = db.session.scalars(
        select(AlertNotice).order_by(AlertNotice.id).limit(NOTICES_PER_PASS)
    ).all()
    sent = 0
    for notice in notices:
        now = utcnow()
        if notice.next_try_at > now:
            break  # waiting for its retry: the notices behind it wait too, to keep the order
        try:
            post_notice(settings, notice.body)
        except WebhookError as exc:
            notice.attempts += 1
            if notice.attempts < MAX_TRIES:
                notice.next_try_at = now + retry_delay(settings, notice.attempts)
                logger.warning("alert webhook failed (try %d): %s", notice.attempts, exc)
                db.session.commit()
                break
            logger.error("alert notice dropped after %d tries: %s", MAX_TRIES, notice.body)
        else:
            sent += 1
        db.session.delete(notice)
        db.session.commit()
    return sent
