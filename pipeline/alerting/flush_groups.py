"""The dispatcher's step: due alert groups into notification rows, their new state in the same transaction.

Groups another worker is flushing are skipped (SKIP LOCKED), so nothing is sent twice; a flush redone after
a crash writes the same row ids (insert-or-ignore)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline.alerting.grouping import GroupState
from pipeline.alerting.notification_rows import flush_group
from pipeline.alerting.outbox import (
    active_silences,
    load_rules,
    notify_settings,
    save_groups,
    state_of,
    write_notifications,
)
from pipeline.alerting.sql import utc
from pipeline.storage.models import AlertGroup

__all__ = ["GROUPS_PER_FLUSH", "FlushResult", "flush_due_groups"]

GROUPS_PER_FLUSH = 200


@dataclass(frozen=True)
class FlushResult:
    groups: int  # due groups handled
    notifications: int  # outbox rows written (pending or muted)
    next_flush_at: datetime | None  # the earliest flush still scheduled (to sleep until then)


async def flush_due_groups(engine: AsyncEngine, app_id: str, now: datetime) -> FlushResult:
    """Flush up to GROUPS_PER_FLUSH due groups in one transaction: one statement each to lock the groups,
    read their rules and their owners' silences, save the groups and write the notifications."""
    async with engine.begin() as connection:
        due = (
            select(AlertGroup.__table__)
            .where(AlertGroup.app_id == app_id, AlertGroup.next_flush_at <= now)
            .order_by(AlertGroup.next_flush_at)
            .limit(GROUPS_PER_FLUSH)
            .with_for_update(skip_locked=True)
        )
        groups = (await connection.execute(due)).mappings().all()
        rules = await load_rules(connection, [g["rule_id"] for g in groups])
        silences = await active_silences(connection, [g["owner"] for g in groups], now)
        states: dict[str, GroupState] = {}
        outbox: list[dict[str, Any]] = []
        for group in groups:
            rule = rules.get(group["rule_id"])
            settings = notify_settings(rule.spec, rule.id) if rule is not None else None
            if rule is None or settings is None or rule.owner != group["owner"]:
                # A deleted rule: nothing more to say for it.
                state = replace(state_of(group), next_flush_at=None)
            else:
                windows = silences.get(rule.owner, [])
                state, rows = flush_group(app_id, group, state_of(group), rule.id, settings, windows, now)
                outbox += rows
            states[group["group_key"]] = state
        await save_groups(connection, states)
        written = await write_notifications(connection, outbox)
        earliest = await connection.scalar(
            select(func.min(AlertGroup.next_flush_at)).where(AlertGroup.app_id == app_id)
        )
        return FlushResult(len(groups), written, utc(earliest))
