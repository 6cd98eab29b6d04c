"""Alert rule repository. Every function used by the API takes the owner and filters by it: another owner's
rule is None, exactly like a missing one. The publisher's reconciliation (``live_rule_ids``,
``with_locked_rules``) is the one reader across owners.

Changes run ``publish(row)`` inside their transaction with the row locked, so PostgreSQL and the
``alerts.rules`` topic see one rule's changes in the same order, and a failed publish rolls the change back.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from pipeline.alerting.rules import Rule, RuleSpec
from pipeline.storage.alert_pages import Cursor, newest_first, utc
from pipeline.storage.models import AlertRule

__all__ = [
    "Publish",
    "QuotaExceeded",
    "new_rule_id",
    "rule_of",
    "month_start",
    "next_month_start",
    "create_rule",
    "created_since",
    "get_rule",
    "list_rules",
    "replace_rule",
    "set_enabled",
    "delete_rule",
    "rules_using_endpoint",
    "live_rule_ids",
    "with_locked_rules",
]

# Called with the changed row (version already bumped, not yet committed); raising rolls the change back.
Publish = Callable[[AlertRule], Awaitable[None]]


class QuotaExceeded(Exception):
    """The owner created ``limit`` rules this calendar month (UTC) already; deleted ones count."""

    def __init__(self, used: int, limit: int, resets_at: datetime) -> None:
        super().__init__(f"{used} of {limit} rules created this month")
        self.used, self.limit, self.resets_at = used, limit, resets_at


def new_rule_id() -> str:
    return f"rule_{secrets.token_hex(8)}"


def _spec_document(spec: RuleSpec) -> dict[str, Any]:
    return spec.model_dump(mode="json", by_alias=True)


def rule_of(row: AlertRule) -> Rule:
    """The rule as the API answers it and ``alerts.rules`` carries it."""
    return Rule.model_validate(
        {
            **row.spec,
            "id": row.id,
            "owner": row.owner,
            "version": row.version,
            "created_at": utc(row.created_at),
            "updated_at": utc(row.updated_at),
        }
    )


def month_start(moment: datetime) -> datetime:
    moment = utc(moment)
    return datetime(moment.year, moment.month, 1, tzinfo=UTC)


def next_month_start(moment: datetime) -> datetime:
    start = month_start(moment)
    return (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )


def _quota_lock_key(owner: str) -> int:
    # A signed 64-bit key for pg_advisory_xact_lock, one per owner.
    digest = hashlib.sha256(f"alert-quota\x00{owner}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


async def _count_since(session: AsyncSession, owner: str, since: datetime) -> int:
    query = (
        select(func.count())
        .select_from(AlertRule)
        .where(AlertRule.owner == owner, AlertRule.created_at >= since)
    )
    return int((await session.execute(query)).scalar_one())


async def created_since(engine: AsyncEngine, *, owner: str, since: datetime) -> int:
    """Rules the owner created since ``since``, deleted ones included."""
    async with AsyncSession(engine) as session:
        return await _count_since(session, owner, since)


async def create_rule(
    engine: AsyncEngine, *, owner: str, app_id: str, spec: RuleSpec, monthly_limit: int, publish: Publish
) -> AlertRule:
    """Store and publish a new rule of deployment ``app_id``; QuotaExceeded when the owner's monthly
    creations (in any deployment) reached the limit."""
    now = datetime.now(UTC)
    async with AsyncSession(engine, expire_on_commit=False) as session, session.begin():
        if engine.dialect.name == "postgresql":
            # Serialises one owner's creations, so two at once cannot both take the last rule of the month.
            await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _quota_lock_key(owner)})
        used = await _count_since(session, owner, month_start(now))
        if used >= monthly_limit:
            raise QuotaExceeded(used, monthly_limit, next_month_start(now))
        row = AlertRule(
            id=new_rule_id(),
            owner=owner,
            app_id=app_id,
            spec=_spec_document(spec),
            version=1,
            created_at=now,
            updated_at=now,
        )
        session.add(row)
        await session.flush()
        await publish(row)
    return row


async def get_rule(engine: AsyncEngine, *, owner: str, rule_id: str) -> AlertRule | None:
    """The owner's rule, unless deleted."""
    async with AsyncSession(engine) as session:
        row = await session.get(AlertRule, rule_id)
    return row if row is not None and row.owner == owner and row.deleted_at is None else None


async def list_rules(engine: AsyncEngine, *, owner: str, after: Cursor | None, limit: int) -> list[AlertRule]:
    """The owner's rules that are not deleted, newest first."""
    query = select(AlertRule).where(AlertRule.owner == owner, AlertRule.deleted_at.is_(None))
    query = newest_first(query, AlertRule.created_at, AlertRule.id, after, limit)
    async with AsyncSession(engine) as session:
        return list((await session.execute(query)).scalars())


async def _change(
    engine: AsyncEngine,
    owner: str,
    rule_id: str,
    publish: Publish,
    apply: Callable[[AlertRule, datetime], bool],
) -> AlertRule | None:
    """Lock the owner's live rule, apply the change (False: nothing changed), bump version, publish."""
    async with AsyncSession(engine, expire_on_commit=False) as session, session.begin():
        query = (
            select(AlertRule)
            .where(AlertRule.id == rule_id, AlertRule.owner == owner, AlertRule.deleted_at.is_(None))
            .with_for_update()
        )
        row = (await session.execute(query)).scalar_one_or_none()
        if row is None:
            return None
        now = datetime.now(UTC)
        if apply(row, now):
            # Every change, deletion included, gets a new version: consumers can tell the newest apart.
            row.version += 1
            row.updated_at = now
            await session.flush()
            await publish(row)
    return row


async def replace_rule(
    engine: AsyncEngine, *, owner: str, rule_id: str, spec: RuleSpec, publish: Publish
) -> AlertRule | None:
    def apply(row: AlertRule, now: datetime) -> bool:
        row.spec = _spec_document(spec)
        return True

    return await _change(engine, owner, rule_id, publish, apply)


async def set_enabled(
    engine: AsyncEngine, *, owner: str, rule_id: str, enabled: bool, publish: Publish
) -> AlertRule | None:
    """Enable or disable; asking for the state the rule is already in changes (and publishes) nothing."""

    def apply(row: AlertRule, now: datetime) -> bool:
        if bool(row.spec.get("enabled", True)) == enabled:
            return False
        row.spec = {**row.spec, "enabled": enabled}  # a new dict, so the JSON column is seen as changed
        return True

    return await _change(engine, owner, rule_id, publish, apply)


async def delete_rule(engine: AsyncEngine, *, owner: str, rule_id: str, publish: Publish) -> AlertRule | None:
    """Soft delete: the row stays so the monthly quota still counts it."""

    def apply(row: AlertRule, now: datetime) -> bool:
        row.deleted_at = now
        return True

    return await _change(engine, owner, rule_id, publish, apply)


async def rules_using_endpoint(engine: AsyncEngine, *, owner: str, endpoint_id: str) -> list[str]:
    """Ids of the owner's live rules that notify the webhook endpoint."""
    query = select(AlertRule.id, AlertRule.spec).where(
        AlertRule.owner == owner, AlertRule.deleted_at.is_(None)
    )
    async with AsyncSession(engine) as session:
        rows = (await session.execute(query)).all()
    return sorted(
        rule_id
        for rule_id, spec in rows
        if any(
            c.get("type") == "webhook" and c.get("endpoint") == endpoint_id for c in spec.get("channels", [])
        )
    )


async def live_rule_ids(engine: AsyncEngine, *, app_id: str, after: str | None, limit: int) -> list[str]:
    """Ids of the deployment's rules (every owner's) that are not deleted, in id order, after ``after``."""
    query = (
        select(AlertRule.id)
        .where(AlertRule.app_id == app_id, AlertRule.deleted_at.is_(None))
        .order_by(AlertRule.id)
        .limit(limit)
    )
    if after is not None:
        query = query.where(AlertRule.id > after)
    async with AsyncSession(engine) as session:
        return list((await session.execute(query)).scalars())


async def with_locked_rules(
    engine: AsyncEngine,
    rule_ids: Sequence[str],
    use: Callable[[dict[str, AlertRule | None]], Awaitable[None]],
) -> None:
    """Lock the rows of ``rule_ids`` (deleted or not) and call ``use`` with id -> row (None when there is
    no row) inside the transaction: API changes of these rules wait, so nothing is published in between."""
    async with AsyncSession(engine, expire_on_commit=False) as session, session.begin():
        # Locked in id order, so two reconcilers with overlapping batches cannot deadlock.
        query = (
            select(AlertRule).where(AlertRule.id.in_(list(rule_ids))).order_by(AlertRule.id).with_for_update()
        )
        found = {row.id: row for row in (await session.execute(query)).scalars()}
        await use({rule_id: found.get(rule_id) for rule_id in rule_ids})
