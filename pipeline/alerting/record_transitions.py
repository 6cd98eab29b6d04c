"""The agent's step: a batch of alerts.triggered transitions into the alert history and their groups, in one
transaction, with set-based statements (one each for the history rows, the rules, the group locks, the
silences, the group states and the notification rows, whatever the batch's size).

A transition already stored (a redelivery: the worker died before its offset was committed) changes
nothing, because its history row and its group change were committed together. Within the batch each
group sees its transitions in order, and a group due at once (group_wait 0) is flushed right after the
transition that made it due, exactly as if every transition had its own transaction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from pipeline.alerting.grouping import GroupState, NotifySettings, apply_transition, group_key
from pipeline.alerting.messages import AlertTransition
from pipeline.alerting.notification_rows import flush_group
from pipeline.alerting.outbox import (
    NewGroup,
    active_silences,
    load_rules,
    lock_groups,
    notify_settings,
    save_groups,
    state_of,
    write_notifications,
)
from pipeline.alerting.silencing import SilenceWindow
from pipeline.alerting.sql import insert_on_conflict, table_of, utc
from pipeline.storage.models import AlertEvent

__all__ = ["BatchRecorded", "record_transitions"]


@dataclass(frozen=True)
class BatchRecorded:
    duplicates: int  # stored before (redelivered), or twice in the batch: changed nothing
    scheduled: int  # stored, and their group has a flush scheduled
    recorded: int  # stored as history only (nothing scheduled)
    notifications: int  # outbox rows written by flushes done at once
    next_flush_at: datetime | None  # the earliest flush the batch left scheduled


@dataclass(frozen=True)
class _Work:
    transition: AlertTransition
    settings: NotifySettings
    group: NewGroup


def _history_row(transition: AlertTransition) -> dict[str, Any]:
    return {
        "owner": transition["owner"],
        "rule_id": transition["rule_id"],
        "fingerprint": transition["fingerprint"],
        "state": transition["state"],
        "as_of": utc(datetime.fromisoformat(transition["as_of"])),
        "source": transition["source"],
        "transition": dict(transition),
    }


async def _store_history(
    connection: AsyncConnection, transitions: Sequence[AlertTransition]
) -> list[AlertTransition]:
    """Insert-or-ignore every transition's history row; the transitions stored now, in batch order."""
    if not transitions:
        return []
    # In arrival order (the history's ids keep it); a second copy within the batch is left to the loop below.
    unique = {(t["fingerprint"], t["source"]): t for t in reversed(transitions)}
    rows = [_history_row(t) for t in transitions if unique.get((t["fingerprint"], t["source"])) is t]
    statement = (
        insert_on_conflict(connection, table_of(AlertEvent))
        .on_conflict_do_nothing(index_elements=["fingerprint", "source"])
        .returning(AlertEvent.fingerprint, AlertEvent.source)
    )
    inserted = {(row[0], row[1]) for row in await connection.execute(statement, rows)}
    fresh = []
    for transition in transitions:
        key = (transition["fingerprint"], transition["source"])
        if key in inserted:
            inserted.discard(key)  # a second copy in the same batch is a duplicate
            fresh.append(transition)
    return fresh


async def record_transitions(
    engine: AsyncEngine, app_id: str, transitions: Sequence[AlertTransition], now: datetime
) -> BatchRecorded:
    """Store the transitions in the alert history and fold them into their rules' groups, in one
    transaction. Nothing is scheduled for a deleted or disabled rule, a rule without channels, or a state
    that does not notify."""
    async with engine.begin() as connection:
        fresh = await _store_history(connection, transitions)
        rules = await load_rules(connection, (t["rule_id"] for t in fresh))
        settings_of: dict[str, NotifySettings | None] = {}
        work: list[_Work] = []
        for transition in fresh:
            rule_id = transition["rule_id"]
            rule = rules.get(rule_id)
            if rule is None or rule.owner != transition["owner"]:
                continue
            if rule_id not in settings_of:
                settings_of[rule_id] = notify_settings(rule.spec, rule_id)
            settings = settings_of[rule_id]
            if settings is None or not settings.enabled or not settings.channels:
                continue
            key, labels = group_key(app_id, rule.owner, rule_id, settings.group_by, transition["labels"])
            work.append(_Work(transition, settings, (key, rule.owner, rule_id, labels)))

        rows = await lock_groups(connection, app_id, [w.group for w in work])
        states: dict[str, GroupState] = {key: state_of(row) for key, row in rows.items()}
        silences: dict[str, list[SilenceWindow]] | None = None
        outbox: list[dict[str, Any]] = []
        scheduled = 0
        for item in work:
            key, owner, rule_id, _ = item.group
            state = apply_transition(states[key], item.transition, item.settings, now)
            if state.next_flush_at is not None and state.next_flush_at <= now:
                if silences is None:  # read once, for every owner of the batch, when a flush needs them
                    silences = await active_silences(connection, (w.group[1] for w in work), now)
                windows = silences.get(owner, [])
                state, written = flush_group(app_id, rows[key], state, rule_id, item.settings, windows, now)
                outbox += written
            states[key] = state
            scheduled += state.next_flush_at is not None
        await save_groups(connection, states)
        notifications = await write_notifications(connection, outbox)
    pending = [s.next_flush_at for s in states.values() if s.next_flush_at is not None]
    return BatchRecorded(
        duplicates=len(transitions) - len(fresh),
        scheduled=scheduled,
        recorded=len(fresh) - scheduled,
        notifications=notifications,
        next_flush_at=min(pending) if pending else None,
    )
