"""The WebSocket channel end to end: a real worker publishes the notice, a real sidecar forwards it to the
owner's open connections as an ``alert`` message, and to nobody else's."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline.settings import Settings
from tests.integration.alerting import (
    eventually,
    insert_rule,
    notifications_of,
    produce_transitions,
    transition,
)
from tests.integration.sidecar import bearer, delete_keys, new_key, running_sidecar
from tests.integration.support import WorkerProcess

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
async def _forget_keys(settings: Settings) -> AsyncIterator[None]:
    """The keys this test made (new_key) are deleted afterwards."""
    yield
    await delete_keys(settings)


async def _until(
    ws: aiohttp.ClientWebSocketResponse, kind: str, timeout: float = 60
) -> tuple[Any, list[Any]]:
    """The first message of type ``kind`` and every message before it."""
    before: list[Any] = []
    async with asyncio.timeout(timeout):
        while True:
            message = await ws.receive_json()
            if message["type"] == kind:
                return message, before
            before.append(message)


async def test_alert_reaches_the_owners_connections_only(
    engine: AsyncEngine, settings: Settings, ready_worker: WorkerProcess
) -> None:
    owner, other = f"{settings.app_id}-owner", f"{settings.app_id}-other"
    owner_key = await new_key(settings, "pro", owner=owner)
    second_key = await new_key(settings, "pro", owner=owner)  # another key of the same account
    other_key = await new_key(settings, "pro", owner=other)
    async with (
        running_sidecar(settings) as sidecar,
        aiohttp.ClientSession() as http,
        http.ws_connect(sidecar.ws_url, headers=bearer(owner_key)) as mine,
        http.ws_connect(sidecar.ws_url, headers=bearer(second_key)) as mine_too,
        http.ws_connect(sidecar.ws_url, headers=bearer(other_key)) as theirs,
        http.ws_connect(sidecar.ws_url) as anonymous,
    ):
        for ws in (mine, mine_too, theirs, anonymous):
            assert (await ws.receive_json())["type"] == "welcome"
        rule = await insert_rule(
            engine, owner, app_id=settings.app_id, channels=[{"type": "websocket"}], group_wait="0s"
        )
        await produce_transitions(settings, [transition(rule, owner, "chain||Terra", "firing")])

        alert, _ = await _until(mine, "alert")
        again, _ = await _until(mine_too, "alert")
        assert alert == again
        [notification] = await eventually(
            lambda: _delivered(engine, owner), what="the websocket notification marked delivered"
        )
        assert alert["id"] == notification["id"]
        assert alert["rule_id"] == rule and alert["status"] == "firing" and "owner" not in alert
        [instance] = alert["alerts"]
        assert instance["labels"]["chain"] == "Terra" and instance["value"] == -41.5
        assert instance["evidence"][-1] == ["2022-05-11T00:00:00+00:00", 1.05e10]

        # The forward reaches every matching connection in one step, before any later message: a pong
        # answered after the alert went out proves the others were not sent it.
        for ws in (theirs, anonymous):
            await ws.send_json({"op": "ping", "id": "p"})
            _, before = await _until(ws, "pong")
            assert [m for m in before if m["type"] == "alert"] == []


async def _delivered(engine: AsyncEngine, owner: str) -> list[Any] | None:
    found = await notifications_of(engine, owner)
    return found if found and all(n["status"] == "delivered" for n in found) else None
