"""Prometheus metrics of the worker, served by faust's web server at /metrics."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

__all__ = ["RECORDS", "EMITTED", "PROCESSING_SECONDS"]

RECORDS = Counter(
    "llamastream_raw_records_total",
    "Raw records read, by source and outcome: accepted (passed validation), rejected (dead-lettered), "
    "late (older than the key's latest), redelivered (read again after a restart), unknown_event",
    ["source", "outcome"],
)
EMITTED = Counter("llamastream_updates_emitted_total", "Values published to derived topics", ["topic"])
PROCESSING_SECONDS = Histogram(
    "llamastream_event_lag_seconds",
    "Wall time from a raw record's Kafka timestamp to its processing",
    ["source"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
