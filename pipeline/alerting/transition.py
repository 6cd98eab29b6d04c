"""Build the ``alerts.triggered`` message of one instance's state change."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.alerting.conditions import Verdict
from pipeline.alerting.instance import Instance
from pipeline.alerting.messages import AlertTransition, fingerprint
from pipeline.alerting.rule_book import CompiledRule
from pipeline.channels import CHANNELS
from pipeline.records import iso

__all__ = ["Position", "build_transition", "labels_of"]


@dataclass(frozen=True, slots=True)
class Position:
    """Where the input that caused an evaluation sits in Kafka: with the fingerprint, the idempotency key of
    the transitions it causes."""

    topic: str
    partition: int
    offset: int

    def __str__(self) -> str:
        return f"{self.topic}:{self.partition}:{self.offset}"


def labels_of(rule: CompiledRule, row: Mapping[str, Any]) -> dict[str, str]:
    """Rule labels, alertname, severity, and the identity fields of the series (which win a clash)."""
    labels = dict(rule.rule.labels)
    labels["alertname"] = rule.rule.name
    labels["severity"] = rule.rule.severity
    for name in CHANNELS[rule.rule.channel].identity:
        value = row.get(name)
        if value is not None:
            labels[name] = str(value)
    return labels


def build_transition(
    rule: CompiledRule,
    series: str,
    row: Mapping[str, Any],
    previous: Instance,
    current: Instance,
    verdict: Verdict | None,
    as_of: float,
    evidence: list[list[float]],
    source: Position,
) -> AlertTransition:
    # starts_at and ends_at describe a firing: set while firing and on the change that ends it (resolved,
    # or no_data/stale when the input went away while firing).
    ends_firing = previous.state == "firing" and current.state != "firing"
    fired_at = current.fired_at if current.state == "firing" or ends_firing else None
    return {
        "fingerprint": fingerprint(rule.id, series),
        "rule_id": rule.id,
        "rule_version": rule.rule.version,
        "rule_name": rule.rule.name,
        "owner": rule.rule.owner,
        "channel": rule.rule.channel,
        "series_key": series,
        "state": current.state,
        "previous_state": previous.state,
        "severity": rule.rule.severity,
        "labels": labels_of(rule, row),
        "annotations": dict(rule.rule.annotations),
        "value": verdict.value if verdict is not None else None,
        "threshold": verdict.threshold if verdict is not None else None,
        "condition": rule.text,
        "evidence": [(iso(ts), value) for ts, value in evidence],
        "starts_at": iso(fired_at) if fired_at is not None else None,
        "ends_at": iso(current.ended_at) if ends_firing and current.ended_at is not None else None,
        "as_of": iso(as_of),
        "emitted_at": iso(time.time()),
        "source": str(source),
    }
