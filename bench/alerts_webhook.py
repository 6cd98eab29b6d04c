"""The webhook part of bench/alerts_bench.py: latency from a raw TVL event to the webhook receiver, through a
real worker (aggregate_tvl, evaluate_alerts, deliver_notifications, the delivery loop), at a ladder of rates.

Rules and the endpoint are stored in PostgreSQL by the API's own repositories and published to
alerts.rules; one rule per (protocol, chain) series, ``tvl_usd < 1``, webhook channel, ``group_wait: 0s``
and ``group_interval: 0s`` (no deliberate grouping delay; repeat_interval and send_resolved as default).
Each event of a series alternates a drop to 0.5 and a restore, so every event is one transition (firing,
then resolved) and one notification. Latency: receipt at the receiver minus the raw record's Kafka
timestamp (its send time), matched by (series, as_of); an event whose notification never arrives counts
as infinitely late."""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web
from aiokafka import AIOKafkaProducer
from sqlalchemy import delete

from bench.alerts_e2e import ROOT, Worker, _delete_topics, _free_port
from bench.alerts_workload import Universe
from pipeline.alerting.rules import RuleSpec
from pipeline.db import make_engine
from pipeline.records import iso
from pipeline.settings import Settings
from pipeline.storage import alert_rules, webhook_endpoints
from pipeline.storage.alert_rules import rule_of
from pipeline.storage.migrate import upgrade
from pipeline.storage.models import (
    AlertEvent,
    AlertGroup,
    AlertRule,
    DeliveryAttempt,
    Notification,
    WebhookEndpoint,
)
from pipeline.topics import ensure_topics, topic_name

__all__ = ["webhook_latency"]

Log = Callable[[str], None]
DEFAULT_DATABASE = "postgresql+asyncpg://llama:llama@127.0.0.1:5432/llamastream"
TARGET_P99_MS = 500.0


class Receiver:
    """An aiohttp webhook receiver on loopback: the receipt time (ms) of every (series, as_of) told."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.received: dict[tuple[str, str], float] = {}
        self.requests = 0
        self.runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        at = time.time() * 1000
        self.requests += 1
        for alert in orjson.loads(body)["data"]["alerts"]:
            self.received.setdefault((alert["series_key"], alert["as_of"]), at)
        return web.Response(text="ok")

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/hooks", self._handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return f"http://127.0.0.1:{self.port}/hooks"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


def _quantile(ordered: list[float], p: float) -> float | None:
    if not ordered:
        return None
    value = ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]
    return None if math.isinf(value) else round(value, 1)  # None: beyond the run (undelivered)


def _quoted(text: str) -> str:
    return orjson.dumps(text).decode()


async def _store_rules(
    settings: Settings, engine: Any, owner: str, url: str, series: list[tuple[str, str]]
) -> float:
    started = time.monotonic()
    endpoint, _ = await webhook_endpoints.create_endpoint(engine, owner=owner, url=url, description="bench")
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, acks="all", enable_idempotence=True
    )
    await producer.start()
    topic = topic_name(settings, "alerts.rules")

    async def publish(row: AlertRule) -> None:
        value = orjson.dumps(rule_of(row).model_dump(mode="json", by_alias=True))
        await producer.send_and_wait(topic, value, key=row.id.encode())

    try:
        for protocol, chain in series:
            spec = RuleSpec.model_validate(
                {
                    "name": f"{protocol} on {chain} below 1",
                    "channel": "tvl",
                    "scope": f"protocol == {_quoted(protocol)} and chain == {_quoted(chain)}",
                    "metric": "tvl_usd",
                    "condition": {"kind": "threshold", "op": "<", "value": 1.0},
                    "channels": [{"type": "webhook", "endpoint": endpoint.id}],
                    "group_wait": "0s",
                    "group_interval": "0s",
                }
            )
            await alert_rules.create_rule(
                engine, owner=owner, app_id=settings.app_id, spec=spec, monthly_limit=10**9, publish=publish
            )
    finally:
        await producer.stop()
    return time.monotonic() - started


async def _step(
    settings: Settings,
    receiver: Receiver,
    series: list[tuple[str, str]],
    dropped: set[tuple[str, str]],
    rate: float,
    seconds: float,
    grace_s: float,
) -> dict[str, Any]:
    """Raw events at ``rate`` for ``seconds``, then up to ``grace_s`` for the last notifications."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=2)
    await producer.start()
    raw = topic_name(settings, "raw.tvl")
    sent: dict[tuple[str, str], float] = {}
    total, tick, produced, n = int(rate * seconds), 0.01, 0, 0
    started = time.monotonic()
    try:
        while produced < total:
            due = min(total, int((time.monotonic() - started) * rate) + 1)
            while produced < due:
                protocol, chain = key = series[n % len(series)]
                n += 1
                value = 1e6 if key in dropped else 0.5
                dropped.symmetric_difference_update({key})
                now_ms = time.time() * 1000
                ts = now_ms / 1000
                record = {"protocol": protocol, "chain": chain, "tvl_usd": value, "ts": ts, "source": "bench"}
                sent[(f"protocol|{protocol}|{chain}", iso(ts))] = now_ms
                await producer.send(
                    raw, orjson.dumps(record), key=protocol.encode(), timestamp_ms=int(now_ms)
                )
                produced += 1
            await asyncio.sleep(tick)
        produce_s = time.monotonic() - started
        await producer.flush()
    finally:
        await producer.stop()
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(k not in receiver.received for k in sent):
        await asyncio.sleep(0.5)
    latencies = sorted(
        receiver.received[k] - at if k in receiver.received else math.inf for k, at in sent.items()
    )
    missing = sum(1 for v in latencies if math.isinf(v))
    p99 = _quantile(latencies, 99)
    return {
        "target_rate": rate,
        "achieved_rate": round(total / produce_s, 1),
        "events": total,
        "undelivered_after_grace": missing,
        "p50_ms": _quantile(latencies, 50),
        "p90_ms": _quantile(latencies, 90),
        "p99_ms": p99,
        "max_ms": _quantile(latencies, 100),
        "met_p99_under_500ms": p99 is not None and p99 < TARGET_P99_MS,
    }


async def _cleanup(engine: Any, owner: str) -> None:
    async with engine.begin() as connection:
        for model in (DeliveryAttempt, Notification, AlertGroup, AlertEvent, AlertRule, WebhookEndpoint):
            await connection.execute(delete(model).where(model.owner == owner))


async def webhook_latency(universe: Universe, args: Any, log: Log) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    workdir = ROOT / "bench" / ".work" / f"alerts-webhook-{tag}"
    workdir.mkdir(parents=True, exist_ok=True)
    base = Settings()
    database = base.database_url if base.database_url.startswith("postgresql") else DEFAULT_DATABASE
    settings = Settings(
        topic_prefix=f"benchhooks{tag}.",
        app_id=f"benchhooks{tag}",
        worker_web_port=_free_port(),
        topic_partitions=4,
        database_url=database,
        webhook_allow_private=True,  # the receiver is on loopback
    )
    rates = [50.0, 200.0] if args.quick else [float(r) for r in args.webhook_rates.split(",")]
    seconds = 10.0 if args.quick else args.webhook_seconds
    count = 200 if args.quick else args.webhook_series
    series = [(p.name, p.chains[0]) for p in universe.protocols[:count]]
    owner = f"bench-{tag}"
    await ensure_topics(settings)
    await upgrade(settings)
    engine = make_engine(settings)
    receiver = Receiver()
    worker = Worker(settings, workdir / "worker.log")
    result: dict[str, Any] = {
        "what": "raw.tvl event (Kafka timestamp) -> aggregate_tvl -> evaluate_alerts -> deliver_notifications"
        " -> webhook receiver on loopback (receipt time); one worker, rules and endpoint in PostgreSQL",
        "grouping": "group_wait 0s, group_interval 0s (no deliberate delay); repeat_interval 4h,"
        " send_resolved true (defaults)",
        "rules": len(series),
        "undelivered": "counted as infinitely late (a p99 of null means more than 1% never arrived)",
    }
    try:
        url = await receiver.start()
        result["rules_stored_and_published_s"] = round(
            await _store_rules(settings, engine, owner, url, series), 1
        )
        log(
            f"webhook: {len(series)} rules stored and published in {result['rules_stored_and_published_s']} s"
        )
        worker.start()
        await worker.wait_for(b"[^Worker]: Ready", 300)
        await worker.wait_for(b"alert rules loaded", 300)
        dropped: set[tuple[str, str]] = set()
        # Not measured: the first notifications warm the worker (SQL connections, statement caches).
        warmup = await _step(settings, receiver, series, dropped, 20.0, 5.0, grace_s=15.0)
        result["warmup"] = {k: warmup[k] for k in ("events", "p50_ms", "p99_ms", "undelivered_after_grace")}
        steps = []
        for rate in rates:
            step = await _step(settings, receiver, series, dropped, rate, seconds, grace_s=max(15.0, seconds))
            log(
                f"webhook at {step['achieved_rate']}/s: p50 {step['p50_ms']} ms, p99 {step['p99_ms']} ms,"
                f" {step['undelivered_after_grace']} undelivered of {step['events']}"
            )
            steps.append(step)
            if step["p99_ms"] is None or step["p99_ms"] > 10 * TARGET_P99_MS:
                break  # far past what the worker sustains: higher rates only say so again
            await asyncio.sleep(2)
        result["ladder"] = steps
        met = [s["target_rate"] for s in steps if s["met_p99_under_500ms"]]
        result["highest_rate_with_p99_under_500ms"] = max(met) if met else None
        result["receiver_requests"] = receiver.requests
    finally:
        worker.stop()
        await receiver.stop()
        await _cleanup(engine, owner)
        await engine.dispose()
        result["topics_deleted"] = await _delete_topics(settings.kafka_bootstrap, tag)
    return result
