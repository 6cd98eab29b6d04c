"""The outbox's SQL on the group side, set-based: rules, silences and groups read for a whole batch, groups
saved and notification rows written with one statement each. Shared by recording and flushing.

Writes of many rows are one statement executed for a list of parameters: SQLAlchemy sends them as
multi-row INSERTs ("insertmanyvalues") or pipelined UPDATEs from one cached compilation, where a
``.values([...])`` of many rows would be compiled anew for every batch size."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import bindparam, select, update
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from pipeline.alerting.grouping import GroupState, NotifySettings, group_state_of
from pipeline.alerting.silencing import MatcherError, SilenceWindow, parse_matchers
from pipeline.alerting.sql import insert_on_conflict, table_of, utc
from pipeline.storage.models import AlertGroup, AlertRule, Notification, Silence

__all__ = [
    "NewGroup",
    "state_of",
    "notify_settings",
    "load_rules",
    "active_silences",
    "lock_groups",
    "save_groups",
    "write_notifications",
    "reschedule_owner_groups",
]

log = logging.getLogger(__name__)

NewGroup = tuple[str, str, str, dict[str, str]]  # (group key, owner, rule id, group labels)


def state_of(row: Mapping[Any, Any]) -> GroupState:
    """A group row's state with aware UTC times (SQLite hands back naive ones)."""
    state = group_state_of(row)
    state.next_flush_at, state.last_flush_at = utc(state.next_flush_at), utc(state.last_flush_at)
    return state


def notify_settings(spec: Mapping[str, Any] | None, rule_id: str) -> NotifySettings | None:
    try:
        return NotifySettings.model_validate(spec)
    except ValidationError as err:
        log.error("rule %s: unreadable notification settings, nothing sent: %s", rule_id, err)
        return None


async def load_rules(connection: AsyncConnection, rule_ids: Iterable[str]) -> dict[str, Row[Any]]:
    """The live (not deleted) rules among ``rule_ids``: id, owner, spec."""
    wanted = sorted(set(rule_ids))
    if not wanted:
        return {}
    query = select(AlertRule.id, AlertRule.owner, AlertRule.spec).where(
        AlertRule.id.in_(wanted), AlertRule.deleted_at.is_(None)
    )
    return {row.id: row for row in await connection.execute(query)}


async def active_silences(
    connection: AsyncConnection, owners: Iterable[str], now: datetime
) -> dict[str, list[SilenceWindow]]:
    """The silences active now of each of these owners, in one query."""
    wanted = sorted(set(owners))
    if not wanted:
        return {}
    query = select(Silence.id, Silence.owner, Silence.matchers, Silence.starts_at, Silence.ends_at).where(
        Silence.owner.in_(wanted), Silence.starts_at <= now, Silence.ends_at > now
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


async def lock_groups(
    connection: AsyncConnection, app_id: str, groups: Sequence[NewGroup]
) -> dict[str, Mapping[str, Any]]:
    """Create the groups that are new, lock them all and read them, in one statement (an upsert that
    changes nothing on the rows that exist). Keys in sorted order, so two batches lock in the same order."""
    if not groups:
        return {}
    table = table_of(AlertGroup)
    unique = {key: (key, owner, rule_id, labels) for key, owner, rule_id, labels in groups}
    values = [
        {
            "group_key": key,
            "app_id": app_id,
            "owner": owner,
            "rule_id": rule_id,
            "group_labels": labels,
            "alerts": {},
            "notified": {},
            "seq": 0,
        }
        for key, owner, rule_id, labels in (unique[k] for k in sorted(unique))
    ]
    upsert = (
        insert_on_conflict(connection, table)
        .on_conflict_do_update(index_elements=["group_key"], set_={"seq": table.c.seq})
        .returning(*table.c, sort_by_parameter_order=True)
    )
    rows = (await connection.execute(upsert, values)).mappings()
    return {str(row["group_key"]): dict(row) for row in rows}


async def save_groups(connection: AsyncConnection, states: Mapping[str, GroupState]) -> None:
    """Write the groups' new states: one statement, executed for many rows."""
    if not states:
        return
    table = table_of(AlertGroup)
    names = ("alerts", "notified", "next_flush_at", "last_flush_at", "seq")
    statement = (
        update(table)
        .where(table.c.group_key == bindparam("b_key"))
        .values({name: bindparam(f"b_{name}", type_=table.c[name].type) for name in names})
    )
    await connection.execute(
        statement,
        [
            {
                "b_key": key,
                "b_alerts": state.alerts,
                "b_notified": state.notified,
                "b_next_flush_at": state.next_flush_at,
                "b_last_flush_at": state.last_flush_at,
                "b_seq": state.seq,
            }
            for key, state in sorted(states.items())
        ],
    )


async def write_notifications(connection: AsyncConnection, rows: Sequence[dict[str, Any]]) -> int:
    """Insert the outbox rows; insert-or-ignore, because a flush redone with the same sequence number
    writes the same ids."""
    if rows:
        insert = insert_on_conflict(connection, table_of(Notification))
        await connection.execute(insert.on_conflict_do_nothing(index_elements=["id"]), list(rows))
    return len(rows)


async def reschedule_owner_groups(engine: AsyncEngine, owner: str, now: datetime) -> None:
    """Make the owner's scheduled groups due now: for when a silence is lifted early, so alerts it held
    back go out at once instead of at the silence's original end."""
    async with engine.begin() as connection:
        await connection.execute(
            update(AlertGroup)
            .where(AlertGroup.owner == owner, AlertGroup.next_flush_at.is_not(None))
            .values(next_flush_at=now)
        )
