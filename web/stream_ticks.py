"""The WebSocket hub's clock: throttle flushes every 50 ms, heartbeats (with resume positions) and the
usage and queue-depth figures every ``ws_heartbeat_s``."""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from web import metrics, usage
from web.connection import Subscription
from web.hub import Hub
from web.keys import REPLICA, SETTINGS
from web.position import encode_position

__all__ = ["tick_forever", "heartbeat", "heartbeat_position"]

# Heartbeats written between two yields to the event loop.
HEARTBEAT_SLICE = 500


async def tick_forever(app: web.Application, hub: Hub) -> None:
    """Throttle flushes every 50 ms; heartbeats, queue depth and usage every ``ws_heartbeat_s``."""
    settings = app[SETTINGS]
    next_beat = time.monotonic() + settings.ws_heartbeat_s
    while True:
        await asyncio.sleep(0.05)
        hub.flush_throttled()
        if time.monotonic() >= next_beat:
            next_beat = time.monotonic() + settings.ws_heartbeat_s
            await heartbeat(app, hub)


async def heartbeat(app: web.Application, hub: Hub) -> None:
    depth = total = 0
    for n, conn in enumerate(list(hub.connections.values()), 1):
        depth = max(depth, len(conn.queue))
        subs = {sid: heartbeat_position(app, sub) for sid, sub in conn.subs.items() if sub.mode == "live"}
        conn.send({"type": "heartbeat", "time": time.time(), "subs": subs})
        sent, conn.messages_out = conn.messages_out, 0
        if sent:
            total += sent
            await usage.count_messages(app, conn.principal, sent)
        if n % HEARTBEAT_SLICE == 0:
            # Thousands of heartbeats in one go would hold the stream back; let updates through between.
            await asyncio.sleep(0)
    # Counted here, not per message: a Prometheus counter takes a lock on every increment.
    metrics.MESSAGES_OUT.inc(total)
    metrics.QUEUE_DEPTH.set(depth)


def heartbeat_position(app: web.Application, sub: Subscription) -> str:
    """Where the client resumes if it reconnects now: everything before it was delivered or filtered out."""
    if sub.conflated:
        return sub.sent_pos
    return encode_position(app[REPLICA].view(sub.channel, sub.delayed).position)
