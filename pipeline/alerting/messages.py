"""What the alert topics carry (documented in docs/topics.md): transitions on ``alerts.triggered`` and
the notices sidecars forward to WebSocket clients on ``alerts.notifications``."""

from __future__ import annotations

import hashlib
from typing import Literal, TypedDict

__all__ = ["InstanceState", "AlertTransition", "AlertNotice", "fingerprint"]

# normal -> pending (condition true, waiting out `for`) -> firing -> resolved (-> normal on the next
# update); no_data when the metric or its comparison point is missing or the input stopped arriving,
# stale when the input is flagged stale by the pipeline. Neither no_data nor stale ever fires.
InstanceState = Literal["normal", "pending", "firing", "resolved", "no_data", "stale"]


class AlertTransition(TypedDict):
    """One state change of one alert instance (a rule applied to one series).

    Key: the rule id, so every instance of a rule stays in order in one partition and the notifier can
    group them without a shuffle."""

    fingerprint: str  # fingerprint(rule_id, series_key): stable across restarts and versions of a rule
    rule_id: str
    rule_version: int
    rule_name: str
    owner: str
    channel: str  # tvl, prices, yields
    series_key: str  # the derived topic's key of the instance's input
    state: InstanceState
    previous_state: InstanceState
    severity: str
    labels: dict[str, str]  # rule labels + alertname, severity and the series' identity fields
    annotations: dict[str, str]
    value: float | None  # the metric (or the change/z-score the condition tested) at this transition
    threshold: float | None
    condition: str  # human-readable, e.g. "change over 1d < -20%"
    evidence: list[tuple[str, float | None]]  # [as_of, metric] over the condition's window, oldest first
    starts_at: str | None  # when it started firing (ISO UTC); null while pending or normal
    ends_at: str | None  # when it resolved; null unless resolved
    as_of: str  # event time of the input that caused the transition
    emitted_at: str  # wall-clock time of the evaluation
    # The input record's Kafka position: together with fingerprint, an idempotency key for consumers.
    source: str  # "<topic>:<partition>:<offset>"


class AlertNotice(TypedDict):
    """A grouped notification (the outbox row's payload) as sent to the owner's WebSocket connections on
    ``alerts.notifications`` (key: owner); webhooks carry the same object as their ``data``."""

    id: str  # the notification id, equal to the webhook-id sent for the same group flush
    owner: str
    rule_id: str  # "system:endpoint_disabled" for the built-in notice of a disabled webhook endpoint
    rule_name: str
    group_key: str  # "" for the built-in notice
    group_labels: dict[str, str]  # the rule's group_by labels and this group's values of them
    seq: int  # the group's flush number, from 0: with group_key, what the id is derived from
    status: Literal["firing", "resolved"]
    muted: bool  # every listed alert was silenced: recorded, never sent unless replayed
    alerts: list[AlertTransition]  # at most 200, firing first
    truncated: int  # alerts left out of ``alerts``


def fingerprint(rule_id: str, series_key: str) -> str:
    return hashlib.sha256(f"{rule_id}\x00{series_key}".encode()).hexdigest()[:24]
