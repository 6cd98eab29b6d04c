"""After a batch of attempts, in one transaction: the delivery log rows, each notification's next step
(delivered, retry at, abandoned, held) and the webhook endpoints' health (endpoint_health.py), with one
statement per kind of change rather than one transaction per attempt."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import bindparam, insert, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from pipeline.alerting.attempt import AttemptResult, Outgoing
from pipeline.alerting.endpoint_health import (
    FailingEndpoint,
    disable_endpoint,
    endpoint_failed,
    endpoints_succeeded,
)
from pipeline.alerting.sql import table_of
from pipeline.settings import Settings
from pipeline.storage.models import DeliveryAttempt, Notification

__all__ = ["Outcome", "Attempted", "record_results"]

Outcome = Literal["delivered", "retry", "abandoned", "held", "disabled"]


@dataclass(frozen=True)
class Attempted:
    outgoing: Outgoing
    result: AttemptResult
    started_at: datetime
    retry_in: float  # the backoff drawn for a retry, in seconds


def _log_row(item: Attempted) -> dict[str, Any]:
    outgoing, result = item.outgoing, item.result
    return {
        "notification_id": outgoing.id,
        "owner": outgoing.owner,
        "attempt": outgoing.attempt,
        "started_at": item.started_at,
        "target": result.target[:2000],
        "request_headers": result.request_headers,
        "status_code": result.status_code,
        "latency_ms": result.latency_ms,
        "error": result.error,
        "response_excerpt": result.response_excerpt,
        "replay": outgoing.replay,
    }


def _failing_reason(endpoint: FailingEndpoint, result: AttemptResult) -> str:
    since = endpoint.failing_since.astimezone(UTC).isoformat(timespec="seconds")
    return f"no successful delivery since {since}; last error: {result.error}"[:500]


async def _update_each(connection: AsyncConnection, rows: list[dict[str, Any]], **values: Any) -> None:
    """One UPDATE of notifications by id, executed for many rows (``values``: column -> bind name)."""
    if rows:
        table = table_of(Notification)
        statement = (
            update(table)
            .where(table.c.id == bindparam("b_id"))
            .values({column: bindparam(name, type_=table.c[column].type) for column, name in values.items()})
        )
        await connection.execute(statement, rows)


async def record_results(
    engine: AsyncEngine, settings: Settings, attempted: Sequence[Attempted]
) -> list[Outcome]:
    """Log the attempts and decide what comes next for each, in one transaction; outcomes in order."""
    now = datetime.now(UTC)
    outcomes: dict[str, Outcome] = {}
    async with engine.begin() as connection:
        held = [a.outgoing.id for a in attempted if a.result.held]
        if held:
            # Not an attempt: the claim's count is given back, and the endpoint's enable releases it.
            await connection.execute(
                update(Notification)
                .where(Notification.id.in_(held))
                .values(status="held", attempts=Notification.attempts - 1, next_attempt_at=None)
            )
            outcomes.update(dict.fromkeys(held, "held"))
        tried = [a for a in attempted if not a.result.held]
        if tried:
            await connection.execute(insert(DeliveryAttempt), [_log_row(a) for a in tried])
        delivered = [a.outgoing for a in tried if a.result.ok]
        if delivered:
            await connection.execute(
                update(Notification)
                .where(Notification.id.in_([o.id for o in delivered]))
                .values(status="delivered", delivered_at=now, next_attempt_at=None, last_error=None)
            )
            webhooks = {(o.owner, o.target) for o in delivered if o.target_type == "webhook"}
            await endpoints_succeeded(connection, webhooks, now)
            outcomes.update(dict.fromkeys((o.id for o in delivered), "delivered"))
        await _failures(connection, settings, [a for a in tried if not a.result.ok], now, outcomes)
    return [outcomes[a.outgoing.id] for a in attempted]


async def _failures(
    connection: AsyncConnection,
    settings: Settings,
    failed: list[Attempted],
    now: datetime,
    outcomes: dict[str, Outcome],
) -> None:
    """Failed attempts, in order: retry, give up, or disable the endpoint (after the retries are written,
    so a disabling holds them, as if each attempt had been recorded on its own)."""
    limit = timedelta(seconds=settings.webhook_disable_after_s)
    endpoints: dict[tuple[str, str], FailingEndpoint | None] = {}
    retries: list[dict[str, Any]] = []
    abandoned: list[dict[str, Any]] = []
    disabling: list[tuple[Outgoing, FailingEndpoint, str]] = []
    for item in failed:
        outgoing, result = item.outgoing, item.result
        if outgoing.target_type == "webhook" and not result.permanent:
            pair = (outgoing.owner, outgoing.target)
            if pair not in endpoints:
                endpoints[pair] = await endpoint_failed(connection, outgoing, now)
            endpoint = endpoints[pair]
            if endpoint is not None and (result.gone or now - endpoint.failing_since >= limit):
                reason = result.error if result.gone else _failing_reason(endpoint, result)
                disabling.append((outgoing, endpoint, reason or "failing"))
                endpoints[pair] = None  # disabled now: later failures in the batch just retry
                outcomes[outgoing.id] = "disabled"
                continue
        if result.permanent or outgoing.attempt >= settings.webhook_max_attempts:
            abandoned.append({"b_id": outgoing.id, "b_error": result.error})
            outcomes[outgoing.id] = "abandoned"
        else:
            retry_at = now + timedelta(seconds=item.retry_in)
            retries.append({"b_id": outgoing.id, "b_at": retry_at, "b_error": result.error})
            outcomes[outgoing.id] = "retry"
    await _update_each(connection, retries, next_attempt_at="b_at", last_error="b_error")
    for row in abandoned:
        row["b_status"], row["b_at"] = "abandoned", None
    await _update_each(connection, abandoned, status="b_status", next_attempt_at="b_at", last_error="b_error")
    for outgoing, endpoint, reason in disabling:
        await disable_endpoint(connection, outgoing, endpoint, reason, now)
