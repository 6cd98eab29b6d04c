"""What flushing one group now writes: its next state and one outbox row per channel of its rule (pure)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from pipeline.alerting.grouping import (
    GroupState,
    NotifySettings,
    notification_id,
    plan_flush,
    silence_labels,
    target_of,
)
from pipeline.alerting.messages import AlertTransition
from pipeline.alerting.silencing import SilenceWindow, muted_until

__all__ = ["flush_group"]


def _muter(windows: list[SilenceWindow], now: datetime) -> Callable[[AlertTransition], datetime | None]:
    return lambda alert: muted_until(windows, silence_labels(alert), now)


def flush_group(
    app_id: str,
    group: Mapping[Any, Any],
    state: GroupState,
    rule_id: str,
    settings: NotifySettings,
    silences: list[SilenceWindow],
    now: datetime,
) -> tuple[GroupState, list[dict[str, Any]]]:
    """The group's state after a flush now, and its outbox rows (``group``: its key, owner and labels).
    Row ids are deterministic (group key, sequence number, channel), so a flush redone after a crash
    writes the same rows."""
    key, owner, labels = group["group_key"], group["owner"], group["group_labels"]
    plan = plan_flush(state, settings, labels, now, _muter(silences, now))
    if plan.outcome == "none":
        return plan.state, []
    rows = []
    for target_type, target in dict.fromkeys(target_of(channel, owner) for channel in settings.channels):
        nid = notification_id(key, state.seq, target_type, target)
        payload = {
            "id": nid,
            "owner": owner,
            "rule_id": rule_id,
            "rule_name": settings.name,
            "group_key": key,
            "group_labels": labels,
            "seq": state.seq,
            "status": plan.status,
            "muted": plan.outcome == "muted",
            "alerts": plan.alerts,
            "truncated": plan.truncated,
        }
        sending = plan.outcome == "send"
        rows.append(
            {
                "id": nid,
                "app_id": app_id,
                "owner": owner,
                "rule_id": rule_id,
                "group_key": key,
                "target_type": target_type,
                "target": target,
                "payload": payload,
                "status": "pending" if sending else "muted",
                "attempts": 0,
                "next_attempt_at": now if sending else None,
                "created_at": now,
                "replay": False,
            }
        )
    return plan.state, rows
