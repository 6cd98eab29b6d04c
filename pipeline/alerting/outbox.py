"""The transactional outbox, group side: transitions into alert groups, due groups into notification rows.

Each step is one transaction, so a crash anywhere loses nothing and doubles nothing: a redelivered
transition is stored once (its history row and its group change commit together), and a flush writes its
notification rows with the group's new state, under ids that a flush redone after a crash would repeat.
A group due at once (group_wait 0) is flushed in the transition's own transaction: one step less."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import func, select, update
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from pipeline.alerting.grouping import (
    GroupState,
    NotifySettings,
    apply_transition,
    group_key,
    group_state_of,
    notification_id,
    plan_flush,
    silence_labels,
    target_of,
)
from pipeline.alerting.messages import AlertTransition
from pipeline.alerting.silencing import MatcherError, SilenceWindow, muted_until, parse_matchers
from pipeline.alerting.sql import insert_on_conflict, table_of, utc
from pipeline.storage.models import AlertEvent, AlertGroup, AlertRule, Notification, Silence

__all__ = [
    "GROUPS_PER_FLUSH",
    "Recorded",
    "record_transition",
    "FlushResult",
    "flush_due_groups",
    "reschedule_owner_groups",
]

log = logging.getLogger(__name__)

GROUPS_PER_FLUSH = 50


@dataclass(frozen=True)
class Recorded:
    duplicate: bool  # stored before (a redelivery): nothing changed
    due: datetime | None  # when its group is next due; None when nothing is scheduled
    notifications: int = 0  # outbox rows written by a flush done at once


@dataclass(frozen=True)
class FlushResult:
    groups: int  # due groups handled
    notifications: int  # outbox rows written (pending or muted)
    next_flush_at: datetime | None  # the earliest flush still scheduled (to sleep until then)


def _state(row: Mapping[Any, Any]) -> GroupState:
    state = group_state_of(row)
    state.next_flush_at, state.last_flush_at = utc(state.next_flush_at), utc(state.last_flush_at)
    return state


def _notify_settings(spec: Mapping[str, Any] | None, rule_id: str) -> NotifySettings | None:
    try:
        return NotifySettings.model_validate(spec)
    except ValidationError as err:
        log.error("rule %s: unreadable notification settings, nothing sent: %s", rule_id, err)
        return None


async def record_transition(
    engine: AsyncEngine, app_id: str, transition: AlertTransition, now: datetime
) -> Recorded:
    """Store one transition in the alert history and fold it into its rule's group, in one transaction.

    Nothing is scheduled for a deleted or disabled rule, a rule without channels, or a state that does not
    notify."""
    rule_id = transition["rule_id"]
    async with engine.begin() as connection:
        event = (
            insert_on_conflict(connection, table_of(AlertEvent))
            .values(
                owner=transition["owner"],
                rule_id=rule_id,
                fingerprint=transition["fingerprint"],
                state=transition["state"],
                as_of=utc(datetime.fromisoformat(transition["as_of"])),
                source=transition["source"],
                transition=dict(transition),
            )
            .on_conflict_do_nothing(index_elements=["fingerprint", "source"])
            .returning(AlertEvent.id)
        )
        live = (AlertRule.id == rule_id, AlertRule.deleted_at.is_(None))
        if connection.dialect.name == "postgresql":
            # One round trip: the history insert and the rule's lookup (a transition costs round trips).
            stored = event.cte("stored")
            found = (
                await connection.execute(
                    select(
                        select(func.count()).select_from(stored).scalar_subquery().label("inserted"),
                        select(AlertRule.owner).where(*live).scalar_subquery().label("owner"),
                        select(AlertRule.spec).where(*live).scalar_subquery().label("spec"),
                    )
                )
            ).one()
            inserted, owner, spec = bool(found.inserted), found.owner, found.spec
        else:
            inserted = (await connection.execute(event)).first() is not None
            rule = (await connection.execute(select(AlertRule.owner, AlertRule.spec).where(*live))).first()
            owner, spec = (rule.owner, rule.spec) if rule is not None else (None, None)
        if not inserted:
            return Recorded(True, None)  # seen before: its effect on the group was committed with it
        if owner is None or owner != transition["owner"]:
            return Recorded(False, None)
        settings = _notify_settings(spec, rule_id)
        if settings is None or not settings.enabled or not settings.channels:
            return Recorded(False, None)
        key, labels = group_key(app_id, owner, rule_id, settings.group_by, transition["labels"])
        groups = table_of(AlertGroup)
        # Create the group if new, lock it and read it, in one statement (an upsert that changes nothing).
        upsert = (
            insert_on_conflict(connection, groups)
            .values(
                group_key=key,
                app_id=app_id,
                owner=owner,
                rule_id=rule_id,
                group_labels=labels,
                alerts={},
                notified={},
                seq=0,
            )
            .on_conflict_do_update(index_elements=["group_key"], set_={"seq": groups.c.seq})
            .returning(*groups.c)
        )
        row = (await connection.execute(upsert)).mappings().one()
        state = apply_transition(_state(row), transition, settings, now)
        written = 0
        if state.next_flush_at is not None and state.next_flush_at <= now:
            silences = await _active_silences(connection, [owner], now)
            state, outbox = _flush(app_id, row, state, rule_id, settings, silences.get(owner, []), now)
            written = await _write_outbox(connection, outbox)
        await _save(connection, key, state)
        return Recorded(False, state.next_flush_at, written)


async def flush_due_groups(engine: AsyncEngine, app_id: str, now: datetime) -> FlushResult:
    """Flush up to GROUPS_PER_FLUSH due groups: their notifications and their new state, in one
    transaction. Groups another worker is flushing are skipped (SKIP LOCKED), never sent twice."""
    async with engine.begin() as connection:
        due = (
            select(AlertGroup.__table__)
            .where(AlertGroup.app_id == app_id, AlertGroup.next_flush_at <= now)
            .order_by(AlertGroup.next_flush_at)
            .limit(GROUPS_PER_FLUSH)
            .with_for_update(skip_locked=True)
        )
        groups = (await connection.execute(due)).mappings().all()
        rules = await _rules(connection, [g["rule_id"] for g in groups])
        silences = await _active_silences(connection, [g["owner"] for g in groups], now)
        outbox: list[dict[str, Any]] = []
        for group in groups:
            rule = rules.get(group["rule_id"])
            settings = _notify_settings(rule.spec, rule.id) if rule is not None else None
            if rule is None or settings is None or rule.owner != group["owner"]:
                # A deleted rule: nothing more to say for it.
                state = replace(_state(group), next_flush_at=None)
            else:
                windows = silences.get(rule.owner, [])
                state, rows = _flush(app_id, group, _state(group), rule.id, settings, windows, now)
                outbox += rows
            await _save(connection, group["group_key"], state)
        written = await _write_outbox(connection, outbox)
        earliest = await connection.scalar(
            select(func.min(AlertGroup.next_flush_at)).where(AlertGroup.app_id == app_id)
        )
        return FlushResult(len(groups), written, utc(earliest))


def _muter(windows: list[SilenceWindow], now: datetime) -> Callable[[AlertTransition], datetime | None]:
    return lambda alert: muted_until(windows, silence_labels(alert), now)


def _flush(
    app_id: str,
    group: Mapping[Any, Any],
    state: GroupState,
    rule_id: str,
    settings: NotifySettings,
    silences: list[SilenceWindow],
    now: datetime,
) -> tuple[GroupState, list[dict[str, Any]]]:
    """The group's state after a flush now, and its outbox rows: one per channel of the rule."""
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


async def _save(connection: AsyncConnection, key: str, state: GroupState) -> None:
    await connection.execute(
        update(AlertGroup)
        .where(AlertGroup.group_key == key)
        .values(
            alerts=state.alerts,
            notified=state.notified,
            next_flush_at=state.next_flush_at,
            last_flush_at=state.last_flush_at,
            seq=state.seq,
        )
    )


async def _write_outbox(connection: AsyncConnection, rows: list[dict[str, Any]]) -> int:
    if rows:
        # Insert-or-ignore: a flush repeated with the same sequence number writes the same ids.
        await connection.execute(
            insert_on_conflict(connection, table_of(Notification))
            .values(rows)
            .on_conflict_do_nothing(index_elements=["id"])
        )
    return len(rows)


async def _rules(connection: AsyncConnection, rule_ids: Sequence[str]) -> dict[str, Row[Any]]:
    if not rule_ids:
        return {}
    query = select(AlertRule.id, AlertRule.owner, AlertRule.spec).where(
        AlertRule.id.in_(sorted(set(rule_ids))), AlertRule.deleted_at.is_(None)
    )
    return {row.id: row for row in await connection.execute(query)}


async def _active_silences(
    connection: AsyncConnection, owners: Sequence[str], now: datetime
) -> dict[str, list[SilenceWindow]]:
    if not owners:
        return {}
    query = select(Silence.id, Silence.owner, Silence.matchers, Silence.starts_at, Silence.ends_at).where(
        Silence.owner.in_(sorted(set(owners))), Silence.starts_at <= now, Silence.ends_at > now
    )
    silences: dict[str, list[SilenceWindow]] = defaultdict(list)
    for row in await connection.execute(query):
        try:
            matchers = parse_matchers(row.matchers)
        except MatcherError as err:
            log.error("silence %s ignored: %s", row.id, err)
            continue
        starts, ends = utc(row.starts_at), utc(row.ends_at)
        assert starts is not None and ends is not None
        silences[row.owner].append(SilenceWindow(matchers, starts, ends))
    return silences


async def reschedule_owner_groups(engine: AsyncEngine, owner: str, now: datetime) -> None:
    """Make the owner's scheduled groups due now: for when a silence is lifted early, so alerts it held
    back go out at once instead of at the silence's original end."""
    async with engine.begin() as connection:
        await connection.execute(
            update(AlertGroup)
            .where(AlertGroup.owner == owner, AlertGroup.next_flush_at.is_not(None))
            .values(next_flush_at=now)
        )
