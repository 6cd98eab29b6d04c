"""Webhook delivery through a real worker: retries with the same webhook-id until a refusing receiver
accepts, the delivery log, Standard Webhooks signatures checked by an independent implementation."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from pipeline.db import make_engine
from pipeline.settings import Settings
from pipeline.storage.migrate import upgrade
from pipeline.storage.models import Notification
from tests.integration.alerting import (
    WebhookReceiver,
    attempts_of,
    delivery_settings,
    eventually,
    insert_endpoint,
    insert_rule,
    new_owner,
    new_secret,
    notifications_of,
    produce_transitions,
    rows,
    transition,
    webhook_owner,
)
from tests.integration.support import WorkerProcess, free_port

pytestmark = pytest.mark.integration


async def _all_settled(engine: AsyncEngine, owner: str, expected: int) -> list[Any] | None:
    found = await notifications_of(engine, owner)
    settled = [n for n in found if n["status"] in ("delivered", "abandoned")]
    return found if len(found) == expected and len(settled) == expected else None


async def test_refusing_receiver_gets_every_notification_once_by_webhook_id(
    engine: AsyncEngine, settings: Settings, ready_worker: WorkerProcess
) -> None:
    receiver = await WebhookReceiver(free_port(), refuse_first=5).start()
    try:
        secret = new_secret()
        owner, _, channels = await webhook_owner(engine, receiver.url, [secret])
        rules = [
            await insert_rule(engine, owner, app_id=settings.app_id, channels=channels, group_wait="0s")
            for _ in range(3)
        ]
        chains = ["Terra", "Ethereum", "Solana"]
        await produce_transitions(
            settings,
            [transition(rule, owner, f"chain||{c}", "firing") for rule, c in zip(rules, chains, strict=True)],
        )
        found = await eventually(lambda: _all_settled(engine, owner, 3), what="3 notifications delivered")

        assert {n["status"] for n in found} == {"delivered"}
        accepted = receiver.accepted()
        accepted_ids = [r.id for r in accepted]
        # Exactly once by webhook-id: one accepted request per notification, none accepted twice.
        assert sorted(accepted_ids) == sorted(n["id"] for n in found)
        assert len(set(accepted_ids)) == len(accepted_ids) == 3
        assert {r.json()["data"]["rule_id"] for r in accepted} == set(rules)
        # The refused requests were retries of those same notifications, under the same ids.
        refused = [r for r in receiver.received if r.status != 200]
        assert len(refused) == 5
        assert {r.id for r in refused} <= set(accepted_ids)

        # The delivery log: one row per request the receiver saw, numbered, with the answer it gave.
        log = await attempts_of(engine, owner)
        assert len(log) == len(receiver.received)
        by_notification: dict[str, list[Any]] = defaultdict(list)
        for attempt in log:
            by_notification[attempt["notification_id"]].append(attempt)
        for notification in found:
            tried = by_notification[notification["id"]]
            assert [a["attempt"] for a in tried] == list(range(1, len(tried) + 1))
            assert [a["status_code"] for a in tried] == [503] * (len(tried) - 1) + [200]
            assert tried[0]["response_excerpt"] == ("busy" if len(tried) > 1 else "ok")
            assert tried[-1]["error"] is None and tried[-1]["latency_ms"] > 0
            assert tried[-1]["target"] == receiver.url
            assert notification["attempts"] == len(tried)
            headers = tried[-1]["request_headers"]
            assert headers["webhook-id"] == notification["id"]
            assert headers["webhook-signature"] == "v1,<redacted>"  # the log keeps no signature

        # Every request verifies with the independent Standard Webhooks implementation; a wrong key fails.
        for request in receiver.received:
            body = Webhook(secret).verify(request.body, request.headers)
            assert body["data"]["id"] == request.id
            assert body["type"] == "alert.firing"
            with pytest.raises(WebhookVerificationError):
                Webhook(new_secret()).verify(request.body, request.headers)
        alert = accepted[0].json()["data"]["alerts"][0]
        assert alert["value"] == -41.5 and alert["threshold"] == -20.0
        assert alert["evidence"][0] == ["2022-05-10T00:00:00+00:00", 1.8e10]
        assert alert["labels"]["alertname"] == "Terra TVL drop"
    finally:
        await receiver.stop()


async def test_signatures_verify_with_either_secret_during_a_rotation(
    engine: AsyncEngine, settings: Settings, ready_worker: WorkerProcess
) -> None:
    receiver = await WebhookReceiver(free_port()).start()
    try:
        owner = new_owner()
        new, old = new_secret(), new_secret()
        endpoint = await insert_endpoint(engine, owner, receiver.url, [new, old])
        rule = await insert_rule(
            engine,
            owner,
            app_id=settings.app_id,
            channels=[{"type": "webhook", "endpoint": endpoint}],
            group_wait="0s",
        )
        await produce_transitions(settings, [transition(rule, owner, "chain||Terra", "firing")])
        await eventually(lambda: _all_settled(engine, owner, 1), what="the notification delivered")

        [request] = receiver.received
        signatures = request.headers["webhook-signature"].split(" ")
        assert len(signatures) == 2 and all(s.startswith("v1,") for s in signatures)
        # A receiver still on the old secret and one already on the new one both accept it.
        for secret in (new, old):
            assert Webhook(secret).verify(request.body, request.headers)["data"]["rule_id"] == rule
        with pytest.raises(WebhookVerificationError):
            Webhook(new_secret()).verify(request.body, request.headers)
    finally:
        await receiver.stop()


async def test_private_target_refused_unless_allowed(tmp_path: Any, start_worker: Any) -> None:
    """With the default (private ranges refused), a loopback receiver is never contacted; each attempt is
    logged with the reason, and the notification is given up after the configured attempts."""
    settings = delivery_settings(webhook_allow_private=False, webhook_max_attempts=2)
    await upgrade(settings)
    engine = make_engine(settings)
    receiver = await WebhookReceiver(free_port()).start()
    try:
        await start_worker(settings)
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
        [notification] = await eventually(
            lambda: _all_settled(engine, owner, 1), what="the notification settled"
        )

        assert notification["status"] == "abandoned"
        assert receiver.received == []
        log = await attempts_of(engine, owner)
        assert [a["attempt"] for a in log] == [1, 2]
        for attempt in log:
            assert attempt["status_code"] is None
            assert "non-public address 127.0.0.1" in attempt["error"]
        assert "LLAMA_WEBHOOK_ALLOW_PRIVATE" in (notification["last_error"] or "")
        pending = await rows(
            engine,
            select(Notification.id).where(Notification.status == "pending", Notification.owner == owner),
        )
        assert pending == []
    finally:
        await receiver.stop()
        await engine.dispose()
