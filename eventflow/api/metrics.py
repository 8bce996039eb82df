"""GET /metrics: the live counters and the infrastructure gauges in Prometheus' text format."""

from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from ..infrastructure import Infrastructure, read_infrastructure
from ..stats import snapshot
from ..tasks.queue import get_queue
from .operation import TEXT, operation

bp = Blueprint("metrics", __name__)


class _SnapshotCollector:
    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    def collect(self) -> Iterator[Metric]:
        data = self.data
        transitions = CounterMetricFamily(
            "eventflow_events", "Event transitions since the counters began", labels=["transition"]
        )
        for name, value in data["totals"].items():
            transitions.add_metric([name], value)
        yield transitions
        for name, help_text in (
            ("queue_depth", "Events waiting to be processed (PENDING + RETRYING)"),
            ("processing", "Events being processed now"),
            ("dlq_size", "Events in the dead-letter queue (FAILED)"),
            ("workers", "Worker processes with a recent heartbeat"),
        ):
            yield GaugeMetricFamily(f"eventflow_{name}", help_text, value=data[name])
        latency = GaugeMetricFamily(
            "eventflow_processing_latency_ms",
            "Created-to-processed latency over recent events",
            labels=["quantile"],
        )
        for key, quantile in (("p50", "0.5"), ("p95", "0.95"), ("p99", "0.99")):
            if data["latency_ms"][key] is not None:
                latency.add_metric([quantile], data["latency_ms"][key])
        yield latency


class _InfrastructureCollector:
    """The infrastructure panel's figures; a server that did not answer has none."""

    def __init__(self, infra: Infrastructure) -> None:
        self.infra = infra

    def collect(self) -> Iterator[Metric]:
        redis, database = self.infra.redis, self.infra.database
        if redis is not None:
            for name, help_text, value in (
                ("used_memory_bytes", "Memory Redis uses", redis.used_memory_bytes),
                ("peak_memory_bytes", "The most memory Redis has used", redis.peak_memory_bytes),
                ("maxmemory_bytes", "Redis's maxmemory (0: no limit)", redis.maxmemory_bytes),
                ("connected_clients", "Clients connected to Redis", redis.connected_clients),
            ):
                yield GaugeMetricFamily(f"eventflow_redis_{name}", help_text, value=value)
        if database is None:
            return
        if self.infra.database_name == "sqlite":
            yield GaugeMetricFamily(
                "eventflow_sqlite_database_size_bytes",
                "Size of the SQLite database file",
                value=database.database_bytes,
            )
            return
        yield GaugeMetricFamily(
            "eventflow_postgres_database_size_bytes",
            "Size of the PostgreSQL database",
            value=database.database_bytes,
        )
        if database.events_table_bytes is not None:
            yield GaugeMetricFamily(
                "eventflow_postgres_events_table_bytes",
                "Size of the events table with its indexes",
                value=database.events_table_bytes,
            )
        if database.connections is not None:
            yield GaugeMetricFamily(
                "eventflow_postgres_connections",
                "Open connections to the database",
                value=database.connections,
            )


@bp.get("/metrics")
@operation(
    "Counters, queue depth, DLQ size, latency, workers and Redis and database gauges, in "
    "Prometheus' text format",
    tag="operations",
    responses={200: TEXT},
    errors={503: ""},
)
def metrics() -> Response:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(snapshot(get_queue().stats, history=False)))
    registry.register(_InfrastructureCollector(read_infrastructure()))
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
