"""Webhook endpoint health after delivery attempts: successes end a run of failures, failures start or
continue one, and a long run (or HTTP 410) disables the endpoint, holds its notifications and tells the
owner through the alert history and their WebSocket connections."""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncConnection

from pipeline.alerting.attempt import Outgoing
from pipeline.alerting.messages import AlertTransition, fingerprint
from pipeline.alerting.sql import insert_on_conflict, table_of
from pipeline.storage.models import AlertEvent, Notification, WebhookEndpoint

__all__ = [
    "SYSTEM_RULE",
    "FailingEndpoint",
    "endpoints_succeeded",
    "endpoint_failed",
    "disable_endpoint",
    "disabled_notice",
]

SYSTEM_RULE = "system:endpoint_disabled"


@dataclass(frozen=True)
class FailingEndpoint:
    id: str
    url: str
    failing_since: datetime


async def endpoints_succeeded(
    connection: AsyncConnection, endpoints: Collection[tuple[str, str]], now: datetime
) -> None:
    """These (owner, endpoint id) pairs answered 2xx: their failure runs end, in one statement."""
    if not endpoints:
        return
    await connection.execute(
        update(WebhookEndpoint)
        .where(tuple_(WebhookEndpoint.owner, WebhookEndpoint.id).in_(sorted(endpoints)))
        .values(failing_since=None, last_success_at=now)
    )


async def endpoint_failed(
    connection: AsyncConnection, outgoing: Outgoing, now: datetime
) -> FailingEndpoint | None:
    """Start (or continue) the endpoint's run of failures; None when it is gone or already disabled."""
    query = (
        update(WebhookEndpoint)
        .where(
            WebhookEndpoint.id == outgoing.target,
            WebhookEndpoint.owner == outgoing.owner,
            WebhookEndpoint.disabled_at.is_(None),
        )
        .values(failing_since=func.coalesce(WebhookEndpoint.failing_since, now))
        .returning(WebhookEndpoint.id, WebhookEndpoint.url, WebhookEndpoint.failing_since)
    )
    row = (await connection.execute(query)).first()
    if row is None:
        return None
    since = row.failing_since if row.failing_since.tzinfo else row.failing_since.replace(tzinfo=UTC)
    return FailingEndpoint(row.id, row.url, since)


async def disable_endpoint(
    connection: AsyncConnection, outgoing: Outgoing, endpoint: FailingEndpoint, reason: str, now: datetime
) -> None:
    """Disable the endpoint, hold everything pending for it (this notification too), and tell the owner:
    an alert history row and an ``alert`` notice on their WebSocket connections."""
    await connection.execute(
        update(WebhookEndpoint)
        .where(WebhookEndpoint.id == endpoint.id, WebhookEndpoint.owner == outgoing.owner)
        .values(disabled_at=now, disabled_reason=reason[:500])
    )
    await connection.execute(
        update(Notification)
        .where(
            Notification.owner == outgoing.owner,
            Notification.target_type == "webhook",
            Notification.target == endpoint.id,
            Notification.status == "pending",
        )
        .values(status="held", next_attempt_at=None)
    )
    await connection.execute(
        update(Notification)
        .where(Notification.id == outgoing.id)
        .values(status="held", next_attempt_at=None, last_error=reason)
    )
    notice = disabled_notice(outgoing.owner, endpoint.id, endpoint.url, reason, now)
    await connection.execute(
        insert_on_conflict(connection, table_of(AlertEvent))
        .values(
            owner=outgoing.owner,
            rule_id=SYSTEM_RULE,
            fingerprint=notice["fingerprint"],
            state="firing",
            as_of=now,
            source=notice["source"],
            transition=dict(notice),
        )
        .on_conflict_do_nothing(index_elements=["fingerprint", "source"])
    )
    nid = "msg_" + hashlib.sha256(f"{notice['source']}\x00websocket".encode()).hexdigest()[:32]
    app_id = await connection.scalar(select(Notification.app_id).where(Notification.id == outgoing.id))
    payload: dict[str, Any] = {
        "id": nid,
        "owner": outgoing.owner,
        "rule_id": SYSTEM_RULE,
        "rule_name": notice["rule_name"],
        "group_key": "",
        "group_labels": {},
        "seq": 0,
        "status": "firing",
        "muted": False,
        "alerts": [notice],
        "truncated": 0,
    }
    await connection.execute(
        insert_on_conflict(connection, table_of(Notification))
        .values(
            id=nid,
            app_id=app_id,
            owner=outgoing.owner,
            rule_id=SYSTEM_RULE,
            group_key="",
            target_type="websocket",
            target=outgoing.owner,
            payload=payload,
            status="pending",
            attempts=0,
            next_attempt_at=now,
            created_at=now,
            replay=False,
        )
        .on_conflict_do_nothing(index_elements=["id"])
    )


def disabled_notice(owner: str, endpoint_id: str, url: str, reason: str, now: datetime) -> AlertTransition:
    """The endpoint's disabling as an alert of a built-in rule, so it reaches the owner like any alert."""
    at = now.astimezone(UTC).isoformat()
    return AlertTransition(
        fingerprint=fingerprint(SYSTEM_RULE, endpoint_id),
        rule_id=SYSTEM_RULE,
        rule_version=1,
        rule_name="Webhook endpoint disabled",
        owner=owner,
        channel="system",
        series_key=endpoint_id,
        state="firing",
        previous_state="normal",
        severity="warning",
        labels={"alertname": "WebhookEndpointDisabled", "endpoint": endpoint_id, "severity": "warning"},
        annotations={
            "summary": f"webhook endpoint {endpoint_id} ({url[:200]}) was disabled: {reason}"[:2000],
            "action": "fix the receiver, then enable the endpoint; held notifications are sent then",
        },
        value=None,
        threshold=None,
        condition="no successful delivery within the disable period, or HTTP 410",
        evidence=[],
        starts_at=at,
        ends_at=None,
        as_of=at,
        emitted_at=at,
        source=f"endpoint:{endpoint_id}:disabled:{at}",
    )
