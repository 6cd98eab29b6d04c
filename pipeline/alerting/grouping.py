"""Alertmanager grouping as pure functions: group keys, when a group is due, and what a flush sends.

A group is one rule's instances sharing the rule's ``group_by`` labels. Its state is the latest transition
of each instance (``alerts``) and what the last notification told the receiver (``notified``: fingerprint
-> "firing", or "muted" when a silence held it back). Transitions change the state and schedule the next
flush; a flush decides what one notification carries and advances the state, in the same transaction that
writes the outbox rows (pipeline/alerting/outbox.py)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from pipeline.alerting.durations import Duration
from pipeline.alerting.messages import AlertTransition
from pipeline.alerting.rules import NotifyTarget, RuleSpec

__all__ = [
    "NotifySettings",
    "GroupState",
    "FlushPlan",
    "MAX_ALERTS_PER_NOTICE",
    "group_key",
    "apply_transition",
    "plan_flush",
    "notification_id",
    "target_of",
    "silence_labels",
    "group_state_of",
]

# A notice lists at most this many alerts (firing first); the rest are counted in "truncated". A scope
# matching thousands of series firing at once would otherwise make one request of many megabytes.
MAX_ALERTS_PER_NOTICE = 200
ENDED = ("resolved", "normal")
MIN_REPEAT_S = 1

_defaults = RuleSpec.model_fields


class NotifySettings(BaseModel):
    """The notification part of a stored rule spec (alert_rules.spec); the rest is the evaluator's."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str = ""
    channels: list[NotifyTarget] = []
    group_by: list[str] = []
    group_wait: Duration = _defaults["group_wait"].default
    group_interval: Duration = _defaults["group_interval"].default
    repeat_interval: Duration = _defaults["repeat_interval"].default
    send_resolved: bool = _defaults["send_resolved"].default
    enabled: bool = True


@dataclass
class GroupState:
    """One alert_groups row as the pure functions see it."""

    alerts: dict[str, AlertTransition] = field(default_factory=dict)
    notified: dict[str, str] = field(default_factory=dict)
    next_flush_at: datetime | None = None
    last_flush_at: datetime | None = None
    seq: int = 0


@dataclass(frozen=True)
class FlushPlan:
    """What one flush of a due group does: ``outcome`` "send" (``alerts`` go to every channel), "muted"
    (something new happened but every alert of it is silenced: recorded, not sent) or "none"."""

    outcome: Literal["send", "muted", "none"]
    status: Literal["firing", "resolved"]
    alerts: list[AlertTransition]
    truncated: int
    state: GroupState


def group_key(
    app_id: str, owner: str, rule_id: str, group_by: list[str], labels: Mapping[str, str]
) -> tuple[str, dict[str, str]]:
    """The group's key and labels. A label missing from an instance groups as "" (Alertmanager does too).
    The deployment's app id is part of the key: deployments sharing a database keep separate groups."""
    group_labels = {name: labels.get(name, "") for name in sorted(set(group_by))}
    text = "\x00".join([app_id, owner, rule_id, *(f"{k}={v}" for k, v in group_labels.items())])
    return "grp_" + hashlib.sha256(text.encode()).hexdigest()[:40], group_labels


def notification_id(group_key: str, seq: int, target_type: str, target: str) -> str:
    """Deterministic, so a flush redone after a crash writes the same outbox row (and webhook-id) again."""
    text = f"{group_key}\x00{seq}\x00{target_type}\x00{target}"
    return "msg_" + hashlib.sha256(text.encode()).hexdigest()[:32]


def target_of(channel: NotifyTarget, owner: str) -> tuple[str, str]:
    """(target_type, target) of a rule channel: the endpoint id, the address, or the owner."""
    if channel.type == "webhook":
        return "webhook", channel.endpoint
    if channel.type == "email":
        return "email", channel.to
    return "websocket", owner


def silence_labels(alert: AlertTransition) -> dict[str, str]:
    """The labels silences match: the alert's, plus rule_id and alertname when the evaluator left them out."""
    labels = dict(alert["labels"])
    labels.setdefault("alertname", alert["rule_name"])
    labels.setdefault("rule_id", alert["rule_id"])
    return labels


def _schedule(state: GroupState, candidate: datetime) -> None:
    if state.next_flush_at is None or candidate < state.next_flush_at:
        state.next_flush_at = candidate


def apply_transition(
    state: GroupState, transition: AlertTransition, settings: NotifySettings, now: datetime
) -> GroupState:
    """The group after one instance's transition, with its next flush scheduled the Alertmanager way."""
    new = replace(state, alerts=dict(state.alerts), notified=dict(state.notified))
    fp, current = transition["fingerprint"], transition["state"]
    was_told_firing = new.notified.get(fp) == "firing"
    stored = new.alerts.get(fp)
    owes_end_notice = stored is not None and stored["state"] in ENDED and was_told_firing
    changed = False
    if current == "firing":
        new.alerts[fp] = transition
        changed = not was_told_firing
    elif owes_end_notice:
        pass  # the resolved notice still goes out: resolved -> normal -> pending must not swallow it
    elif current in ENDED:
        # "normal" without "resolved" first (e.g. firing -> no_data -> normal) ends the alert all the same.
        if was_told_firing and settings.send_resolved:
            new.alerts[fp] = transition
            changed = True
        else:
            new.alerts.pop(fp, None)
            new.notified.pop(fp, None)
    elif was_told_firing:
        # pending, no_data or stale after a firing notice: not repeated as firing, not resolved either
        # (a missing input is not a recovery); kept, so a return to firing is not news and an end is.
        new.alerts[fp] = transition
    else:
        new.alerts.pop(fp, None)
        new.notified.pop(fp, None)
    if changed:
        if new.notified:
            # The group already told the receiver something: batch changes per group_interval.
            last = new.last_flush_at or now
            _schedule(new, max(now, last + timedelta(seconds=settings.group_interval)))
        else:
            _schedule(new, now + timedelta(seconds=settings.group_wait))
    elif new.next_flush_at is None and _told_firing_and_firing(new):
        # Back to firing after no_data: repeats resume.
        last = new.last_flush_at or now
        _schedule(new, max(now, last + timedelta(seconds=settings.repeat_interval)))
    if not new.alerts:
        new.next_flush_at = None  # nothing left to tell: no repeat either
    return new


def _told_firing_and_firing(state: GroupState) -> bool:
    return any(
        state.notified.get(fp) == "firing" and a["state"] == "firing" for fp, a in state.alerts.items()
    )


def plan_flush(
    state: GroupState,
    settings: NotifySettings,
    group_labels: Mapping[str, str],
    now: datetime,
    muted_until: Callable[[AlertTransition], datetime | None],
) -> FlushPlan:
    """What a due group sends now and its state afterwards.

    ``muted_until(alert)`` is when the silences muting the alert end (None: not muted). Sent: every
    unmuted firing alert when one of them is new to the receiver or the repeat interval has passed, and the
    unmuted alerts that ended after a firing notice (when the rule sends resolved notices)."""
    if not settings.enabled or sorted(group_labels) != sorted(set(settings.group_by)):
        # A disabled rule sends nothing more; a rule whose group_by changed feeds other groups now.
        return FlushPlan("none", "firing", [], 0, replace(state, next_flush_at=None))
    firing = {fp: a for fp, a in state.alerts.items() if a["state"] == "firing"}
    ended = {fp: a for fp, a in state.alerts.items() if a["state"] in ENDED}
    mutes = {fp: muted_until(a) for fp, a in (firing | ended).items()}
    send_firing = [fp for fp in firing if mutes[fp] is None]
    send_ended = [fp for fp in ended if mutes[fp] is None and settings.send_resolved]
    news = [fp for fp in send_firing if state.notified.get(fp) != "firing"]
    repeat = timedelta(seconds=max(settings.repeat_interval, MIN_REPEAT_S))
    repeat_due = state.last_flush_at is None or now >= state.last_flush_at + repeat
    newly_muted = [fp for fp in firing if mutes[fp] and state.notified.get(fp) not in ("firing", "muted")]
    newly_muted += [fp for fp in ended if mutes[fp]]
    if news or send_ended or (send_firing and repeat_due):
        outcome: Literal["send", "muted", "none"] = "send"
        listed = send_firing + send_ended
    elif newly_muted:
        outcome, listed = "muted", newly_muted
    else:
        outcome, listed = "none", []
    alerts = [state.alerts[fp] for fp in listed]
    shown = alerts[:MAX_ALERTS_PER_NOTICE]

    notified = dict(state.notified)
    remaining = dict(state.alerts)
    if outcome == "send":
        notified.update({fp: "firing" for fp in send_firing})
    for fp in firing:
        if mutes[fp] is not None and notified.get(fp) != "firing":
            notified[fp] = "muted"
    for fp in ended:
        # Told (or muted, or not wanted): an ended alert leaves the group either way.
        remaining.pop(fp, None)
        notified.pop(fp, None)
    flushed = outcome != "none"
    last = now if flushed else state.last_flush_at
    candidates = []
    if any(notified.get(fp) == "firing" for fp in firing):
        # Never in the past (all of it muted, nothing was sent) and never a zero interval: either would
        # make the group due again at once, forever.
        due = (last or now) + repeat
        candidates.append(due if due > now else now + repeat)
    # Alerts muted before the receiver heard of them go out when their silences end.
    candidates += [
        until for fp, until in mutes.items() if until is not None and fp in firing and notified[fp] == "muted"
    ]
    after = GroupState(
        alerts=remaining,
        notified=notified,
        next_flush_at=min(candidates) if candidates else None,
        last_flush_at=last,
        seq=state.seq + 1 if flushed else state.seq,
    )
    status: Literal["firing", "resolved"] = (
        "firing" if any(a["state"] == "firing" for a in alerts) else "resolved"
    )
    return FlushPlan(outcome, status, shown, len(alerts) - len(shown), after)


def group_state_of(row: Mapping[Any, Any]) -> GroupState:
    """A GroupState from an alert_groups row's columns."""
    return GroupState(
        alerts=dict(row["alerts"] or {}),
        notified=dict(row["notified"] or {}),
        next_flush_at=row["next_flush_at"],
        last_flush_at=row["last_flush_at"],
        seq=int(row["seq"] or 0),
    )
