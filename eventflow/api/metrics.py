"""GET /metrics: the live counters in Prometheus' text format, for ops to scrape."""

from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

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


@bp.get("/metrics")
@operation(
    "Counters, queue depth, DLQ size, latency and workers, in Prometheus' text format",
    tag="operations",
    responses={200: TEXT},
    errors={503: ""},
)
def metrics() -> Response:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(snapshot(get_queue().stats, history=False)))
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
