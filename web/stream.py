"""``/v1/stream``: the WebSocket endpoint (subscribe, unsubscribe, list, ping) over the hub."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
from aiohttp import WSMsgType, web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.channels import CHANNELS
from pipeline.filters import FilterError, compile_filter
from web import auth, metrics, ratelimit, usage
from web.catchup import catch_up
from web.connection import CloseCode, Connection, Subscription
from web.hub import Hub, snapshot_messages
from web.keys import PRINCIPAL, REPLICA, SETTINGS
from web.position import PositionError, decode_position, encode_position
from web.stream_ticks import tick_forever

__all__ = ["setup", "HUB"]

log = logging.getLogger(__name__)

HUB = web.AppKey("hub", Hub)
_SLOTS = web.AppKey("catch_up_slots", asyncio.Semaphore)
# A client that keeps sending past its budget after this many refusals is disconnected.
MAX_REFUSALS = 50


class SubscribeMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    op: str
    id: str | None = Field(None, max_length=64)
    channel: str
    filter: str | None = Field(None, max_length=2000)
    snapshot: bool = True
    resume: str | None = Field(None, max_length=8192)
    throttle_ms: int = Field(0, ge=0, le=60_000)


def setup(app: web.Application) -> None:
    app.router.add_get("/v1/stream", stream_handler)
    app.cleanup_ctx.append(_hub)
    auth.on_key_revoked(app, lambda key_id: _close_connections_of(app, key_id))


async def _close_connections_of(app: web.Application, key_id: str) -> None:
    """A revoked key's streams end at once, on every sidecar (revocations arrive over Redis)."""
    for conn in list(app[HUB].connections.values()):
        if conn.principal.key_id == key_id:
            await conn.close(CloseCode.KEY_REVOKED, "key revoked")


async def _hub(app: web.Application) -> AsyncIterator[None]:
    hub = Hub(app[REPLICA])
    app[HUB] = hub
    app[_SLOTS] = asyncio.Semaphore(16)
    ticker = asyncio.create_task(tick_forever(app, hub), name="ws-ticks")
    yield
    ticker.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await ticker
    for conn in list(hub.connections.values()):
        await conn.close(CloseCode.GOING_AWAY, "server shutting down")


async def stream_handler(request: web.Request) -> web.WebSocketResponse:
    app = request.app
    settings = app[SETTINGS]
    principal = request[PRINCIPAL]
    # No permessage-deflate: an update is serialised once for all its recipients, and compressing it
    # again per connection would cost more CPU than the fan-out itself (messages are small JSON).
    ws = web.WebSocketResponse(
        max_msg_size=settings.ws_max_message_bytes, autoping=True, heartbeat=60, compress=False
    )
    await ws.prepare(request)
    transport = request.transport
    if transport is None:  # the client left during the handshake
        return ws
    conn = Connection(
        uuid.uuid4().hex, principal, ws, transport, settings.ws_queue_max, settings.ws_send_timeout_s
    )
    conn.start_budget(settings.ws_max_inbound_per_s)
    if not await ratelimit.acquire_connection(app, principal, conn.id):
        _error(
            conn,
            None,
            "too_many_connections",
            f"the {principal.tier} tier allows {principal.limits.ws_connections} connections per key",
        )
        await conn.close(CloseCode.TOO_MANY_CONNECTIONS, "too many connections")
        await conn.stop()
        return ws
    hub = app[HUB]
    hub.connections[conn.id] = conn
    metrics.CONNECTIONS.inc()
    conn.send(_welcome(app, conn))
    try:
        async for message in ws:
            if message.type == WSMsgType.TEXT:
                await _on_text(app, conn, message.data)
            elif message.type == WSMsgType.BINARY:
                _error(conn, None, "invalid_message", "binary frames are not accepted; send JSON text")
            if conn.rejected_in_a_row > MAX_REFUSALS:
                await conn.close(CloseCode.POLICY, "too many messages")
    finally:
        for sub in conn.subs.values():
            hub.remove(sub)
        hub.connections.pop(conn.id, None)
        metrics.CONNECTIONS.dec()
        await conn.stop()
        await ratelimit.release_connection(app, principal, conn.id)
        if conn.messages_out:
            metrics.MESSAGES_OUT.inc(conn.messages_out)
            usage.count_messages(app, principal, conn.messages_out)
    return ws


def _welcome(app: web.Application, conn: Connection) -> dict[str, Any]:
    settings = app[SETTINGS]
    limits = conn.principal.limits
    return {
        "type": "welcome",
        "tier": conn.principal.tier,
        "delay_s": settings.free_tier_delay_s if conn.principal.delayed else 0,
        "channels": sorted(CHANNELS),
        "limits": {
            "subscriptions": min(settings.ws_max_subscriptions, limits.ws_subscriptions),
            "messages_per_s": settings.ws_max_inbound_per_s,
            "max_message_bytes": settings.ws_max_message_bytes,
            "queue": settings.ws_queue_max,
        },
    }


def _error(conn: Connection, answer_to: Any, code: str, message: str, **extra: Any) -> None:
    metrics.WS_ERRORS.labels(code).inc()
    conn.send({"type": "error", "id": answer_to, "code": code, "message": message, **extra})


async def _on_text(app: web.Application, conn: Connection, text: str) -> None:
    settings = app[SETTINGS]
    if not conn.take_inbound_token(settings.ws_max_inbound_per_s):
        _error(
            conn,
            None,
            "rate_limited",
            f"more than {settings.ws_max_inbound_per_s:g} messages per second; this one was ignored",
        )
        return
    try:
        message = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        _error(conn, None, "invalid_message", f"not JSON: {exc}")
        return
    if not isinstance(message, dict) or not isinstance(message.get("op"), str):
        _error(conn, None, "invalid_message", 'a message is a JSON object with an "op" string')
        return
    op, answer_to = message["op"], message.get("id")
    if op == "subscribe":
        _subscribe(app, conn, message)
    elif op == "unsubscribe":
        sub = conn.subs.pop(str(message.get("sub")), None)
        if sub is None:
            _error(conn, answer_to, "unknown_subscription", f"no subscription {message.get('sub')!r} here")
            return
        app[HUB].remove(sub)
        sub.mode = "suspended"
        conn.send({"type": "unsubscribed", "id": answer_to, "sub": sub.id})
    elif op == "list":
        conn.send(
            {"type": "subscriptions", "id": answer_to, "subs": [_describe(s) for s in conn.subs.values()]}
        )
    elif op == "ping":
        conn.send({"type": "pong", "id": answer_to, "time": time.time()})
    else:
        _error(conn, answer_to, "unknown_op", f"unknown op {op!r}; use subscribe, unsubscribe, list or ping")


def _describe(sub: Subscription) -> dict[str, Any]:
    return {
        "sub": sub.id,
        "id": sub.client_id,
        "channel": sub.channel,
        "filter": sub.filter.text,
        "throttle_ms": sub.throttle_ms,
        "state": sub.mode,
    }


def _subscribe(app: web.Application, conn: Connection, message: dict[str, Any]) -> None:
    answer_to = message.get("id")
    try:
        request = SubscribeMessage.model_validate(message)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(x) for x in first["loc"])
        _error(conn, answer_to, "invalid_message", f"subscribe: {field}: {first['msg']}", field=field)
        return
    channel = CHANNELS.get(request.channel)
    if channel is None:
        _error(
            conn,
            answer_to,
            "unknown_channel",
            f"unknown channel {request.channel!r}; choose one of {', '.join(sorted(CHANNELS))}",
        )
        return
    allowed = min(app[SETTINGS].ws_max_subscriptions, conn.principal.limits.ws_subscriptions)
    if len(conn.subs) >= allowed:
        _error(conn, answer_to, "too_many_subscriptions", f"at most {allowed} subscriptions per connection")
        return
    try:
        predicate = compile_filter(request.filter, channel.fields)
    except FilterError as exc:
        details = exc.to_dict()
        _error(
            conn,
            answer_to,
            "invalid_filter",
            details["message"],
            position=details["position"],
            expected=details["expected"],
        )
        return
    replica = app[REPLICA]
    delayed = conn.principal.delayed
    state = replica.view(channel.name, delayed)
    start = None
    if request.resume is not None:
        try:
            start = decode_position(request.resume, replica.partitions(channel.name))
        except PositionError as exc:
            _error(conn, answer_to, "invalid_resume", str(exc))
            return
    sub = Subscription(
        id=f"s{uuid.uuid4().hex[:8]}",
        client_id=answer_to if isinstance(answer_to, str) else None,
        channel=channel.name,
        filter=predicate,
        delayed=delayed,
        throttle_ms=request.throttle_ms,
        conn=conn,
    )
    position = dict(state.position)
    sub.sent_pos = request.resume or encode_position(position)
    conn.subs[sub.id] = sub
    conn.send({"type": "subscribed", "id": answer_to, **_describe(sub), "pos": sub.sent_pos})
    hub = app[HUB]
    if start is not None:
        sub.mode = "catching_up"
        hub.add(sub)
        task = asyncio.get_running_loop().create_task(catch_up(replica, sub, start, app[_SLOTS]))
        task.add_done_callback(lambda done: _catch_up_done(done, sub))
        return
    # Snapshot and registration happen in one step of the event loop: no update can fall between them.
    sub.next = position
    if request.snapshot:
        pos = encode_position(position)
        items = state.matching(predicate)
        for data in snapshot_messages(sub, items, pos):
            conn.offer(sub, pos, data)
    hub.add(sub)


def _catch_up_done(task: asyncio.Task[None], sub: Subscription) -> None:
    """A read-back that failed (broker unreachable) must not leave the client waiting in silence."""
    if task.cancelled() or task.exception() is None:
        return
    log.error("catch-up of %s failed", sub.id, exc_info=task.exception())
    sub.mode = "suspended"
    sub.conn.send(
        {
            "type": "resync_required",
            "sub": sub.id,
            "channel": sub.channel,
            "reason": "catch_up_failed",
            "resume": sub.sent_pos,
            "message": "reading back from your position failed; subscribe again with this resume position",
        }
    )
