"""Endpoint health through a real worker: an endpoint failing for the whole disable period (or answering
410) is disabled with a notice to its owner, its notifications are held, and sent once it is enabled."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline.settings import Settings
from pipeline.storage.models import AlertEvent, WebhookEndpoint
from tests.integration.alerting import (
    WebhookReceiver,
    delivery_settings,
    eventually,
    insert_endpoint,
    insert_rule,
    new_owner,
    notifications_of,
    produce_transitions,
    rows,
    transition,
    webhook_owner,
)
from tests.integration.support import WorkerProcess, free_port, read_topic

pytestmark = pytest.mark.integration


@pytest.fixture
def settings() -> Settings:
    return delivery_settings(webhook_disable_after_s=2.0, webhook_max_attempts=100)


async def _endpoint(engine: AsyncEngine, endpoint_id: str) -> Any:
    [row] = await rows(engine, select(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id))
    return row


async def _disabled(engine: AsyncEngine, endpoint_id: str) -> Any:
    row = await _endpoint(engine, endpoint_id)
    return row if row["disabled_at"] is not None else None


async def _enable(engine: AsyncEngine, endpoint_id: str) -> None:
    """What the API's enable does: the endpoint is usable again and its failure run starts afresh."""
    async with engine.begin() as connection:
        await connection.execute(
            update(WebhookEndpoint)
            .where(WebhookEndpoint.id == endpoint_id)
            .values(disabled_at=None, disabled_reason=None, failing_since=None)
        )


async def _statuses(engine: AsyncEngine, owner: str, wanted: dict[str, str]) -> list[Any] | None:
    """The owner's notifications once those of each target type have the wanted status."""
    found = await notifications_of(engine, owner)
    by_type = {n["target_type"]: n["status"] for n in found}
    return found if all(by_type.get(t) == s for t, s in wanted.items()) else None


async def test_failing_endpoint_is_disabled_with_a_notice_and_held_until_enabled(
    engine: AsyncEngine, settings: Settings, ready_worker: WorkerProcess
) -> None:
    receiver = await WebhookReceiver(free_port(), refuse_first=10**9, refuse_status=500).start()
    try:
        owner, endpoint, channels = await webhook_owner(engine, receiver.url)
        rule = await insert_rule(
            engine, owner, app_id=settings.app_id, channels=channels, group_wait="0s", group_by=["chain"]
        )
        await produce_transitions(settings, [transition(rule, owner, "chain||Terra", "firing")])

        disabled = await eventually(lambda: _disabled(engine, endpoint), what="the endpoint disabled")
        assert disabled["disabled_reason"].startswith("no successful delivery since ")
        assert "HTTP 500" in disabled["disabled_reason"]
        assert (disabled["disabled_at"] - disabled["failing_since"]).total_seconds() >= 2.0
        settled = await eventually(
            lambda: _statuses(engine, owner, {"webhook": "held", "websocket": "delivered"}),
            what="the notification held and the owner's notice sent",
        )
        [held] = [n for n in settled if n["target_type"] == "webhook"]
        tried = len(receiver.received)
        assert tried >= 2 and {r.id for r in receiver.received} == {held["id"]}

        # The owner is told: in the alert history, and on their WebSocket connections (alerts.notifications).
        [event] = await rows(
            engine,
            select(AlertEvent).where(AlertEvent.owner == owner, AlertEvent.rule_id.startswith("system:")),
        )
        assert event["transition"]["labels"] == {
            "alertname": "WebhookEndpointDisabled",
            "endpoint": endpoint,
            "severity": "warning",
        }
        notices = await read_topic(settings, "alerts.notifications", until=lambda ms: len(ms) >= 1)
        [notice] = [orjson.loads(m.value) for m in notices if m.key == owner]
        assert notice["alerts"][0]["labels"]["alertname"] == "WebhookEndpointDisabled"
        assert endpoint in notice["alerts"][0]["annotations"]["summary"]

        # While disabled, new notifications for the endpoint are held, not sent.
        await produce_transitions(settings, [transition(rule, owner, "chain||Ethereum", "firing")])
        await eventually(
            lambda: _count_status(engine, owner, "held", 2), what="the second notification held too"
        )
        assert len(receiver.received) == tried

        # Enabled again (and the receiver fixed): both go out, the first under the id it was tried with.
        receiver.refuse_first = 0
        await _enable(engine, endpoint)
        await eventually(lambda: _count_status(engine, owner, "delivered", 3), what="both webhooks delivered")
        accepted = receiver.accepted()
        assert len(accepted) == 2 and held["id"] in {r.id for r in accepted}
        healthy = await _endpoint(engine, endpoint)
        assert healthy["failing_since"] is None and healthy["last_success_at"] is not None
    finally:
        await receiver.stop()


async def _count_status(engine: AsyncEngine, owner: str, status: str, count: int) -> list[Any] | None:
    found = [n for n in await notifications_of(engine, owner) if n["status"] == status]
    return found if len(found) >= count else None


async def test_410_gone_disables_the_endpoint_at_once(
    engine: AsyncEngine, settings: Settings, ready_worker: WorkerProcess
) -> None:
    receiver = await WebhookReceiver(free_port(), refuse_first=10**9, refuse_status=410).start()
    try:
        owner = new_owner()
        endpoint = await insert_endpoint(engine, owner, receiver.url)
        rule = await insert_rule(
            engine,
            owner,
            app_id=settings.app_id,
            channels=[{"type": "webhook", "endpoint": endpoint}],
            group_wait="0s",
        )
        await produce_transitions(settings, [transition(rule, owner, "chain||Terra", "firing")])
        disabled = await eventually(lambda: _disabled(engine, endpoint), what="the endpoint disabled")
        assert "410 Gone" in disabled["disabled_reason"]
        [held] = await eventually(
            lambda: _count_status(engine, owner, "held", 1), what="the notification held"
        )
        assert len(receiver.received) == 1 and held["attempts"] == 1
    finally:
        await receiver.stop()
