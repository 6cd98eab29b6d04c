"""Helpers of the alert tests: a client of the alerts API with a key, rule bodies, what alerts.rules holds."""

from __future__ import annotations

import asyncio
import base64
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import aiohttp
import orjson
from aiohttp import web
from aiokafka import AIOKafkaProducer
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline.alerting.messages import fingerprint
from pipeline.alerting.rules import RuleSpec
from pipeline.settings import Settings
from pipeline.storage.models import AlertRule, DeliveryAttempt, Notification, WebhookEndpoint
from pipeline.topics import topic_name
from tests.integration.support import read_all

T = TypeVar("T")


@dataclass
class AlertApi:
    """Calls one sidecar with one key (None: anonymous); answers (status, JSON body or None)."""

    session: aiohttp.ClientSession
    base_url: str
    key: str | None

    async def call(self, method: str, path: str, body: Any = None, **params: str) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        data = body if body is None or isinstance(body, bytes) else orjson.dumps(body)
        if data is not None:
            headers["Content-Type"] = "application/json"
        async with self.session.request(
            method, self.base_url + path, data=data, headers=headers, params=params or None
        ) as response:
            payload = await response.read()
            return response.status, (orjson.loads(payload) if payload else None)


def rule_body(**overrides: Any) -> dict[str, Any]:
    """A valid rule: Terra's chain TVL falling more than 20% in a day."""
    return {
        "name": "Terra TVL drop",
        "channel": "tvl",
        "scope": 'kind == "chain" and chain == "Terra"',
        "metric": "tvl_usd",
        "condition": {"kind": "change", "window": "1d", "op": "<", "value": -20},
        "severity": "critical",
        **overrides,
    }


async def rules_on_topic(settings: Settings) -> dict[str, dict[str, Any] | None]:
    """The latest value of every key of alerts.rules (None: a tombstone), as a compacted read would see it."""
    latest: dict[str, dict[str, Any] | None] = {}
    for message in await read_all(settings, "alerts.rules"):
        latest[message.key] = orjson.loads(message.value) if message.value else None
    return latest


# ---- notifications (tests/integration/alerts/delivery/): rules and endpoints written straight to
# PostgreSQL, transitions produced straight to alerts.triggered, real receivers on loopback ----


def delivery_settings(**overrides: Any) -> Settings:
    """Unique settings for a worker that delivers to loopback receivers, with short retry delays."""
    from tests.integration.conftest import unique_settings

    return unique_settings().model_copy(
        update={
            "webhook_allow_private": True,
            "webhook_timeout_s": 5.0,
            "webhook_backoff_base_s": 0.2,
            "webhook_backoff_max_s": 1.0,
            **overrides,
        }
    )


async def insert_rule(engine: AsyncEngine, owner: str, *, app_id: str, **spec: Any) -> str:
    """A rule stored as the API stores it (RuleSpec by alias); its id."""
    now = datetime.now(UTC)
    rule_id = f"rule_{uuid.uuid4().hex[:12]}"
    body = RuleSpec.model_validate(rule_body(**spec)).model_dump(mode="json", by_alias=True)
    async with engine.begin() as connection:
        await connection.execute(
            insert(AlertRule).values(
                id=rule_id, owner=owner, app_id=app_id, spec=body, version=1, created_at=now, updated_at=now
            )
        )
    return rule_id


def new_owner() -> str:
    """An account name no other test uses."""
    return f"owner-{uuid.uuid4().hex[:10]}"


async def webhook_owner(
    engine: AsyncEngine, url: str, secrets: list[str] | None = None
) -> tuple[str, str, list[dict[str, Any]]]:
    """A new owner with one webhook endpoint at ``url``: the owner, the endpoint's id, and the rule
    channels that name it."""
    owner = new_owner()
    endpoint = await insert_endpoint(engine, owner, url, secrets)
    return owner, endpoint, [{"type": "webhook", "endpoint": endpoint}]


async def insert_endpoint(engine: AsyncEngine, owner: str, url: str, secrets: list[str] | None = None) -> str:
    """A webhook endpoint signing with ``secrets`` (newest first; all active); its id."""
    now = datetime.now(UTC)
    endpoint_id = f"ep_{uuid.uuid4().hex[:12]}"
    entries = [
        {"secret": s, "created_at": now.isoformat(), "expires_at": None} for s in secrets or [new_secret()]
    ]
    async with engine.begin() as connection:
        await connection.execute(
            insert(WebhookEndpoint).values(
                id=endpoint_id, owner=owner, url=url, description="", secrets=entries, created_at=now
            )
        )
    return endpoint_id


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


def transition(
    rule_id: str, owner: str, series: str, state: str, *, previous: str = "pending", **fields: Any
) -> dict[str, Any]:
    """An AlertTransition as the evaluator would send it, for the series ``series`` of a TVL rule."""
    now = datetime.now(UTC).isoformat()
    return {
        "fingerprint": fingerprint(rule_id, series),
        "rule_id": rule_id,
        "rule_version": 1,
        "rule_name": "Terra TVL drop",
        "owner": owner,
        "channel": "tvl",
        "series_key": series,
        "state": state,
        "previous_state": previous,
        "severity": "critical",
        "labels": {"alertname": "Terra TVL drop", "severity": "critical", "chain": series.split("|")[-1]},
        "annotations": {"summary": f"{series} TVL fell"},
        "value": -41.5,
        "threshold": -20.0,
        "condition": "change over 1d < -20%",
        "evidence": [["2022-05-10T00:00:00+00:00", 1.8e10], ["2022-05-11T00:00:00+00:00", 1.05e10]],
        "starts_at": now if state == "firing" else None,
        "ends_at": now if state == "resolved" else None,
        "as_of": now,
        "emitted_at": now,
        "source": f"tvl.updates:0:{uuid.uuid4().int % 10**9}",
        **fields,
    }


async def produce_transitions(settings: Settings, transitions: list[dict[str, Any]]) -> None:
    """Send to alerts.triggered keyed by rule id, as the evaluator does, and wait for the acks."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for value in transitions:
            await producer.send_and_wait(
                topic_name(settings, "alerts.triggered"), orjson.dumps(value), key=value["rule_id"].encode()
            )
    finally:
        await producer.stop()


async def eventually(check: Callable[[], Awaitable[T | None]], timeout: float = 60.0, what: str = "") -> T:
    """Polls ``check`` until it returns something truthy; its last answer goes into the timeout message."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.2)
    raise TimeoutError(f"not met after {timeout}s: {what} (last: {last!r})")


async def rows(engine: AsyncEngine, query: Any) -> list[Any]:
    async with engine.connect() as connection:
        return list((await connection.execute(query)).mappings().all())


async def notifications_of(engine: AsyncEngine, owner: str) -> list[Any]:
    return await rows(
        engine, select(Notification).where(Notification.owner == owner).order_by(Notification.created_at)
    )


async def attempts_of(engine: AsyncEngine, owner: str) -> list[Any]:
    return await rows(
        engine, select(DeliveryAttempt).where(DeliveryAttempt.owner == owner).order_by(DeliveryAttempt.id)
    )


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    status: int  # what the receiver answered

    @property
    def id(self) -> str:
        return self.headers["webhook-id"]

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class WebhookReceiver:
    """A real HTTP receiver on loopback: answers ``refuse_status`` to the first ``refuse_first`` requests
    (then 200), and records every request it got."""

    port: int
    refuse_first: int = 0
    refuse_status: int = 503
    received: list[Received] = field(default_factory=list)
    runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/alerts"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        status = self.refuse_status if len(self.received) < self.refuse_first else 200
        self.received.append(Received(dict(request.headers), body, status))
        return web.Response(status=status, text="busy" if status != 200 else "ok")

    async def start(self) -> WebhookReceiver:
        app = web.Application()
        app.router.add_post("/hooks/alerts", self._handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    def accepted(self) -> list[Received]:
        return [r for r in self.received if r.status == 200]


# ---- evaluation (tests/integration/alerts/test_evaluation.py): rules produced straight to alerts.rules ----


def stored_rule(rule_id: str | None = None, owner: str = "owner-eval", **spec: Any) -> dict[str, Any]:
    """A Rule as alerts.rules carries it (RuleSpec by alias plus id, owner, version, times)."""
    from pipeline.alerting.rules import Rule

    now = datetime.now(UTC)
    body = rule_body(**spec)
    rule = Rule.model_validate(
        {
            **body,
            "id": rule_id or f"rule_{uuid.uuid4().hex[:12]}",
            "owner": owner,
            "created_at": now,
            "updated_at": now,
        }
    )
    return rule.model_dump(mode="json", by_alias=True)


async def publish_rules(settings: Settings, rules: dict[str, dict[str, Any] | None]) -> None:
    """Produce rule id -> Rule JSON (None: a tombstone, the rule deleted) to alerts.rules, acknowledged."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for rule_id, value in rules.items():
            await producer.send_and_wait(
                topic_name(settings, "alerts.rules"),
                orjson.dumps(value) if value is not None else None,
                key=rule_id.encode(),
            )
    finally:
        await producer.stop()
