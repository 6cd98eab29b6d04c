"""One owner's key cannot read, change, silence or replay another owner's rules, silences, webhook endpoints,
notifications or alert events: every id of the other owner answers 404, and every listing leaves it out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from pipeline.settings import Settings
from pipeline.storage.models import AlertEvent, DeliveryAttempt, Notification
from tests.integration.alerting import AlertApi, rule_body
from tests.integration.sidecar import Sidecar, new_key, running_sidecar
from web.keys import ENGINE
from web.rule_publisher import RULE_PUBLISHER

pytestmark = pytest.mark.integration


@pytest.fixture
async def sidecar(settings: Settings) -> AsyncIterator[Sidecar]:
    settings = settings.model_copy(update={"webhook_allow_private": True})
    async with running_sidecar(settings) as sidecar:
        await asyncio.wait_for(sidecar.app[RULE_PUBLISHER].reconciled.wait(), 60)
        yield sidecar


async def _outbox_rows(
    engine: AsyncEngine, settings: Settings, owner: str, rule_id: str, endpoint: str
) -> str:
    """What the notifier would have written for the owner: a notification, its attempt, an alert event."""
    now = datetime.now(UTC)
    notification_id = f"msg_{settings.app_id[-10:]}"
    async with AsyncSession(engine) as session, session.begin():
        session.add(
            Notification(
                id=notification_id, app_id=settings.app_id, owner=owner, rule_id=rule_id, group_key="g1",
                target_type="webhook", target=endpoint, payload={"status": "firing"}, status="delivered",
                attempts=1, next_attempt_at=None, created_at=now, delivered_at=now, replay=False,
            )
        )  # fmt: skip
        session.add(
            DeliveryAttempt(
                notification_id=notification_id, owner=owner, attempt=1, started_at=now, target="http://x",
                request_headers={"webhook-id": notification_id}, status_code=200, latency_ms=3.5,
                response_excerpt="ok", replay=False,
            )
        )  # fmt: skip
        session.add(
            AlertEvent(
                owner=owner, rule_id=rule_id, fingerprint="f" * 24, state="firing", as_of=now,
                source=f"t:0:{settings.app_id}", transition={"state": "firing", "rule_id": rule_id},
            )
        )  # fmt: skip
    return notification_id


async def test_another_owners_things_are_not_found(settings: Settings, sidecar: Sidecar) -> None:
    async with aiohttp.ClientSession() as session:
        alice = AlertApi(
            session, sidecar.url, await new_key(settings, "pro", owner=f"{settings.app_id}-alice")
        )
        bob = AlertApi(session, sidecar.url, await new_key(settings, "pro", owner=f"{settings.app_id}-bob"))

        status, endpoint = await alice.call("POST", "/v1/alerts/webhooks", {"url": "http://127.0.0.1:9/hook"})
        assert status == 201, endpoint
        ep = endpoint["id"]
        status, rule = await alice.call(
            "POST", "/v1/alerts/rules", rule_body(channels=[{"type": "webhook", "endpoint": ep}])
        )
        assert status == 201, rule
        ends = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        silence_body = {"matchers": [{"name": "chain", "op": "=", "value": "Terra"}], "ends_at": ends}
        status, silence = await alice.call("POST", "/v1/alerts/silences", silence_body)
        assert status == 201, silence
        notification = await _outbox_rows(sidecar.app[ENGINE], settings, rule["owner"], rule["id"], ep)
        alice_view = {
            path: await alice.call("GET", path)
            for path in (
                f"/v1/alerts/rules/{rule['id']}",
                f"/v1/alerts/silences/{silence['id']}",
                f"/v1/alerts/webhooks/{ep}",
                f"/v1/alerts/notifications/{notification}",
            )
        }
        assert all(status == 200 for status, _ in alice_view.values()), alice_view

        refused = [
            ("GET", f"/v1/alerts/rules/{rule['id']}", None),
            ("PUT", f"/v1/alerts/rules/{rule['id']}", rule_body()),
            ("PATCH", f"/v1/alerts/rules/{rule['id']}", {"enabled": False}),
            ("DELETE", f"/v1/alerts/rules/{rule['id']}", None),
            ("GET", f"/v1/alerts/silences/{silence['id']}", None),
            ("DELETE", f"/v1/alerts/silences/{silence['id']}", None),
            ("GET", f"/v1/alerts/webhooks/{ep}", None),
            ("DELETE", f"/v1/alerts/webhooks/{ep}", None),
            ("POST", f"/v1/alerts/webhooks/{ep}/rotate", {}),
            ("POST", f"/v1/alerts/webhooks/{ep}/enable", None),
            ("GET", f"/v1/alerts/notifications/{notification}", None),
            ("POST", f"/v1/alerts/notifications/{notification}/replay", None),
            ("POST", "/v1/alerts/backtest",
             {"rule_id": rule["id"], "from": "2022-01-01", "to": "2022-02-01", "resolution": "1d"}),
        ]  # fmt: skip
        for method, path, body in refused:
            status, error = await bob.call(method, path, body)
            assert status == 404, (method, path, error)
            assert error["error"]["code"].endswith("_not_found"), (method, path, error)
            assert rule["owner"] not in error["error"]["message"]

        # Bob's listings are empty, whatever he filters by.
        for path, name, params in [
            ("/v1/alerts/rules", "rules", {}),
            ("/v1/alerts/silences", "silences", {}),
            ("/v1/alerts/silences", "silences", {"state": "active"}),
            ("/v1/alerts/webhooks", "endpoints", {}),
            ("/v1/alerts/notifications", "notifications", {}),
            ("/v1/alerts/notifications", "notifications", {"rule_id": rule["id"]}),
            ("/v1/alerts/events", "events", {}),
            ("/v1/alerts/events", "events", {"rule_id": rule["id"]}),
        ]:
            assert await bob.call("GET", path, **params) == (200, {name: [], "next_cursor": None}), path
        # Nor can he point his own rule at her endpoint.
        status, error = await bob.call(
            "POST", "/v1/alerts/rules", rule_body(channels=[{"type": "webhook", "endpoint": ep}])
        )
        assert (status, error["error"]["code"]) == (400, "unknown_endpoint")

        # Alice's things are as they were, and hers to see.
        for path, (status, body) in alice_view.items():
            assert await alice.call("GET", path) == (status, body), path
        status, events = await alice.call("GET", "/v1/alerts/events", rule_id=rule["id"])
        assert [e["state"] for e in events["events"]] == ["firing"]
        status, listing = await alice.call("GET", "/v1/alerts/notifications")
        assert [n["id"] for n in listing["notifications"]] == [notification]
        detail = alice_view[f"/v1/alerts/notifications/{notification}"][1]
        assert [a["status_code"] for a in detail["delivery_attempts"]] == [200]
        status, replayed = await alice.call("POST", f"/v1/alerts/notifications/{notification}/replay")
        assert status == 202, replayed
        assert (replayed["status"], replayed["replay"], replayed["id"]) == ("pending", True, notification)
