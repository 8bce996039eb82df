"""GET /health and /api/v1/health; GET /metrics."""

from tests.processes import free_port


def test_health_is_ok_with_both_checks_on_both_paths(client):
    for path in ("/health", "/api/v1/health"):
        response = client.get(path)
        assert response.status_code == 200
        assert response.get_json() == {
            "status": "ok",
            "checks": {"database": "ok", "queue": "ok"},
        }


def test_health_is_503_degraded_naming_the_database_when_it_is_down(migrated, base_env):
    from eventflow import create_app

    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere"
    client = create_app({**base_env, "DATABASE_URL": dead}).test_client()
    response = client.get("/health")
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "degraded"
    assert body["checks"]["database"] != "ok"
    assert body["checks"]["queue"] == "ok"


def test_metrics_exposes_counters_and_gauges_in_prometheus_format(client, auth):
    client.post("/api/v1/events", json={"type": "A", "payload": {}}, headers=auth)
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    text = response.get_data(as_text=True)
    assert 'eventflow_events_total{transition="ingested"} 1.0' in text
    assert "eventflow_queue_depth 1.0" in text
    assert "eventflow_dlq_size 0.0" in text
