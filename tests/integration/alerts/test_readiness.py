"""/readyz of a real sidecar waits for its startup reconciliation of alerts.rules, and says why meanwhile."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiokafka.errors import KafkaConnectionError

from pipeline.settings import Settings
from pipeline.storage import migrate
from pipeline.topics import ensure_topics
from tests.integration.support import free_port
from web import rule_publisher
from web.app import create_app
from web.rule_publisher import RULE_PUBLISHER, RulePublisher

pytestmark = pytest.mark.integration


async def _readyz(http: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any]]:
    async with http.get(url + "/readyz") as response:
        return response.status, await response.json()


async def test_readyz_is_not_ready_until_alerts_rules_is_reconciled(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The reconciliation fails (as with Kafka unreachable) until released, and retries quickly.
    release = asyncio.Event()
    reconcile_all = RulePublisher.reconcile_all

    async def failing_until_released(self: RulePublisher) -> tuple[int, int]:
        if not release.is_set():
            raise KafkaConnectionError("Unable to bootstrap from 127.0.0.1:9092")
        return await reconcile_all(self)

    monkeypatch.setattr(RulePublisher, "reconcile_all", failing_until_released)
    monkeypatch.setattr(rule_publisher, "BACKOFF_FIRST_S", 0.1)
    monkeypatch.setattr(rule_publisher, "BACKOFF_MAX_S", 0.2)

    await ensure_topics(settings)
    await migrate.upgrade(settings)
    app = create_app(settings)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 60
            while True:  # until every other check is ready (the replica catches up)
                status, body = await _readyz(http, url)
                others = {name: check for name, check in body["checks"].items() if name != "rules"}
                failed = body["checks"]["rules"].get("error", "").startswith("KafkaConnectionError")
                if failed and all(check["ok"] for check in others.values()):
                    break
                assert time.monotonic() < deadline, body
                await asyncio.sleep(0.2)
            assert (status, body["ready"]) == (503, False), body
            rules = body["checks"]["rules"]
            assert rules["ok"] is False and rules["pending_repairs"] == 0, rules
            assert rules["error"] == "KafkaConnectionError: Unable to bootstrap from 127.0.0.1:9092", rules

            release.set()
            await asyncio.wait_for(app[RULE_PUBLISHER].reconciled.wait(), 30)
            status, body = await _readyz(http, url)
            assert (status, body["ready"]) == (200, True), body
            assert body["checks"]["rules"] == {"ok": True, "pending_repairs": 0}
    finally:
        await runner.cleanup()
