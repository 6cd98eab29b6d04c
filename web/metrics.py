"""The sidecar's Prometheus metrics (served at /metrics by web.ops)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "CONNECTIONS",
    "MESSAGES_OUT",
    "RESYNCS",
    "WS_ERRORS",
    "QUEUE_DEPTH",
    "REPLICA_LAG",
    "REPLICA_ROWS",
    "REQUEST_LATENCY",
    "CATCH_UPS",
]

CONNECTIONS = Gauge("llamastream_ws_connections", "open WebSocket connections")
MESSAGES_OUT = Counter("llamastream_ws_messages_out_total", "messages written to WebSocket clients")
RESYNCS = Counter("llamastream_ws_resyncs_total", "subscriptions told resync_required (slow or expired)")
WS_ERRORS = Counter("llamastream_ws_errors_total", "error messages sent to WebSocket clients", ["code"])
QUEUE_DEPTH = Gauge("llamastream_ws_queue_depth_max", "deepest outbound queue among connections")
REPLICA_LAG = Gauge("llamastream_replica_lag_messages", "messages between the replica and the topics' ends")
REPLICA_ROWS = Gauge("llamastream_replica_rows", "rows held by the live replica", ["channel"])
CATCH_UPS = Counter("llamastream_ws_catch_ups_total", "resumed subscriptions read back from Kafka")
REQUEST_LATENCY = Histogram(
    "llamastream_http_request_seconds",
    "REST request latency",
    ["method", "route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
