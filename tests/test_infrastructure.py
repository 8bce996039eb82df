"""The infrastructure panel (CONTRACT §11): Redis memory and clients, database size and
connections on the Overview and in /metrics; a server that is down shows as unavailable."""

from __future__ import annotations

import re
from html import unescape

import pytest
from sqlalchemy import event as sa_event

from eventflow import create_app, users
from eventflow.extensions import db
from tests.processes import free_port
from tests.test_dashboard_views import PASSWORD, log_in

HTMX = {"HX-Request": "true"}


def figure(html: str, name: str) -> str:
    """The text of the panel's element marked data-figure=name."""
    match = re.search(rf'data-figure="{name}">([^<]*)<', html)
    assert match, f"no {name} figure in the panel"
    return unescape(match.group(1)).strip()


def gauge(metrics: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", metrics, re.MULTILINE)
    assert match, f"{name} missing from /metrics"
    return float(match.group(1))


@pytest.fixture
def viewer_client(client, make_user):
    # A viewer sees the whole dashboard, the panel included.
    assert log_in(client, make_user(role="viewer").email).status_code == 302
    return client


def test_overview_shows_redis_memory_and_clients_and_the_databases_sizes(viewer_client):
    html = viewer_client.get("/dashboard/").get_data(as_text=True)
    assert "Infrastructure" in html
    assert re.fullmatch(r"[\d.,]+ (B|KiB|MiB|GiB)", figure(html, "redis_used_memory"))
    assert re.fullmatch(r"[\d.,]+ (B|KiB|MiB|GiB)", figure(html, "redis_peak_memory"))
    # The test Redis runs without a memory limit.
    assert figure(html, "redis_maxmemory") == "no limit"
    assert int(figure(html, "redis_clients").replace(",", "")) >= 1
    assert figure(html, "database_size").endswith("MiB")
    assert re.fullmatch(r"[\d.,]+ KiB", figure(html, "events_table"))
    assert int(figure(html, "database_connections")) >= 1


def test_the_panel_polls_a_fragment_of_itself(viewer_client):
    overview = viewer_client.get("/dashboard/").get_data(as_text=True)
    assert 'hx-get="/dashboard/infrastructure" hx-trigger="every 5s"' in overview
    fragment = viewer_client.get("/dashboard/infrastructure", headers=HTMX)
    assert fragment.status_code == 200
    body = fragment.get_data(as_text=True)
    assert body.lstrip().startswith('<section id="infrastructure"')
    assert "<html" not in body
    # Typed into the address bar, the fragment's URL shows the whole Overview instead.
    assert viewer_client.get("/dashboard/infrastructure").headers["Location"] == "/dashboard/"


def test_the_panel_is_for_dashboard_users_only(client, make_user):
    assert client.get("/dashboard/infrastructure", headers=HTMX).status_code == 403
    log_in(client, make_user().email)  # an ordinary user cannot log in to the dashboard
    assert client.get("/dashboard/infrastructure", headers=HTMX).status_code == 403


def test_metrics_exports_the_same_gauges_with_plausible_values(client, make_user, auth):
    client.post("/api/v1/events", json={"type": "A", "payload": {}}, headers=auth)
    text = client.get("/metrics").get_data(as_text=True)
    assert gauge(text, "eventflow_redis_used_memory_bytes") > 100_000
    peak = gauge(text, "eventflow_redis_peak_memory_bytes")
    assert peak >= gauge(text, "eventflow_redis_used_memory_bytes") * 0.5
    assert gauge(text, "eventflow_redis_maxmemory_bytes") == 0  # no limit
    assert gauge(text, "eventflow_redis_connected_clients") >= 1
    # An empty table still has its pages and index pages; the database is many times larger.
    events_bytes = gauge(text, "eventflow_postgres_events_table_bytes")
    assert events_bytes > 8192
    assert gauge(text, "eventflow_postgres_database_size_bytes") > 10 * events_bytes
    assert gauge(text, "eventflow_postgres_connections") >= 1


def test_a_scrape_storm_reads_the_servers_once_per_few_seconds(app, client):
    sent: list[str] = []

    def record(_conn, _cursor, statement, *_args):
        if "pg_database_size" in statement:
            sent.append(statement)

    client.get("/metrics")  # the first scrape reads the servers
    with app.app_context():
        sa_event.listen(db.engine, "before_cursor_execute", record)
    try:
        for _ in range(20):
            assert "eventflow_postgres_connections" in client.get("/metrics").get_data(as_text=True)
    finally:
        with app.app_context():
            sa_event.remove(db.engine, "before_cursor_execute", record)
    # Twenty scrapes within a few seconds: at most one more reading (when the first expired).
    assert len(sent) <= 1


def test_with_redis_down_the_panel_says_unavailable_and_the_page_still_loads(
    migrated, base_env, make_user
):
    viewer = make_user(role="viewer")
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    client = create_app({**base_env, "REDIS_URL": dead_redis, "TESTING": True}).test_client()
    assert log_in(client, viewer.email).status_code == 302
    response = client.get("/dashboard/")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert "Redis is unavailable" in figure(html, "redis_unavailable")
    # The database's figures are still there.
    assert figure(html, "database_size").endswith("MiB")
    panel = client.get("/dashboard/infrastructure", headers=HTMX)
    assert panel.status_code == 200
    assert "Redis is unavailable" in panel.get_data(as_text=True)


def test_embedded_mode_shows_the_sqlite_file_and_says_the_rest_does_not_apply(base_env, tmp_path):
    # Empty overrides hide this process's DATABASE_URL and REDIS_URL: the embedded default.
    embedded = {"DATABASE_URL": "", "REDIS_URL": "", "EVENTFLOW_INSTANCE_PATH": str(tmp_path)}
    app = create_app({**base_env, **embedded, "TESTING": True})
    with app.app_context():
        db.create_all()  # the migrations' schema (tests/test_migrations.py holds them equal)
        users.create_user("v@example.com", PASSWORD, role="viewer")
    client = app.test_client()
    assert log_in(client, "v@example.com").status_code == 302
    html = client.get("/dashboard/").get_data(as_text=True)
    assert re.fullmatch(r"[\d.,]+ KiB", figure(html, "database_size"))
    assert "Does not apply" in figure(html, "redis_not_applicable")
    assert "do not apply to the embedded SQLite file" in html
    text = client.get("/metrics").get_data(as_text=True)
    # The file and its write-ahead log, which holds the latest pages until a checkpoint.
    main, wal = (tmp_path / "eventflow.sqlite3").stat().st_size, tmp_path / "eventflow.sqlite3-wal"
    assert main <= gauge(text, "eventflow_sqlite_database_size_bytes") <= main + wal.stat().st_size
    assert "eventflow_redis_used_memory_bytes" not in text
