"""The WebSocket hub's clock: throttle flushes every tick (50 ms), and heartbeats (with resume positions),
usage and the queue-depth gauge every ``ws_heartbeat_s``.

Heartbeats are paced: each round (every ``ws_heartbeat_s``) takes the open connections and beats a slice of
them per tick over the first half of the interval. Every connection still hears one every
``ws_heartbeat_s``, but the hub never writes one to every connection at once: at 15,000 connections that
was ~270 ms of socket writes in a row, which the updates queued behind (the sidecar bench's p99).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Iterable

from aiohttp import web

from web import metrics, usage
from web.connection import Connection, Subscription
from web.hub import Hub
from web.keys import REPLICA, SETTINGS
from web.position import encode_position

__all__ = ["tick_forever", "HeartbeatRounds", "heartbeat", "heartbeat_position"]

TICK_S = 0.05
# The share of the interval a round's heartbeats are spread over: the rest is slack for a busy loop.
SPREAD = 0.5


class HeartbeatRounds:
    """Which connections are due a heartbeat at each tick (pure: the clock is passed in)."""

    def __init__(self, interval_s: float, tick_s: float = TICK_S, now: float | None = None) -> None:
        self.interval_s = interval_s
        self.ticks_per_round = max(1, int(interval_s * SPREAD / tick_s))
        self.next_round = (time.monotonic() if now is None else now) + interval_s
        self.queue: deque[Connection] = deque()
        self.per_tick = 0

    def due(self, connections: Iterable[Connection], now: float) -> list[Connection]:
        """This tick's slice; a new round (all of ``connections``) once the interval has passed, with what
        the last round had left (a loop too busy to tick) beaten at once."""
        taken: list[Connection] = []
        if now >= self.next_round:
            self.next_round = max(self.next_round + self.interval_s, now)
            taken.extend(self.queue)
            self.queue = deque(connections)
            self.per_tick = math.ceil(len(self.queue) / self.ticks_per_round)
        for _ in range(min(self.per_tick, len(self.queue))):
            taken.append(self.queue.popleft())
        return taken


async def tick_forever(app: web.Application, hub: Hub) -> None:
    """Throttle flushes every tick; heartbeats a slice per tick; the queue-depth gauge once a round."""
    rounds = HeartbeatRounds(app[SETTINGS].ws_heartbeat_s)
    while True:
        await asyncio.sleep(TICK_S)
        hub.flush_throttled()
        now = time.monotonic()
        was = rounds.next_round
        beats = rounds.due(hub.connections.values(), now)
        if rounds.next_round != was:
            metrics.QUEUE_DEPTH.set(max((len(c.queue) for c in hub.connections.values()), default=0))
        if beats:
            heartbeat(app, beats)


def heartbeat(app: web.Application, connections: Iterable[Connection]) -> None:
    """A heartbeat to each connection still open, with its subscriptions' resume positions; the messages
    sent since the last one are counted (here, not per message: a Prometheus counter takes a lock on
    every increment)."""
    total = 0
    positions: dict[tuple[str, bool], str] = {}  # one encoding per view, shared by the slice
    for conn in connections:
        if conn.closing or conn.ws.closed:
            continue
        subs = {
            sid: heartbeat_position(app, sub, positions)
            for sid, sub in conn.subs.items()
            if sub.mode == "live"
        }
        conn.send({"type": "heartbeat", "time": time.time(), "subs": subs})
        sent, conn.messages_out = conn.messages_out, 0
        if sent:
            total += sent
            usage.count_messages(app, conn.principal, sent)
    metrics.MESSAGES_OUT.inc(total)


def heartbeat_position(
    app: web.Application, sub: Subscription, positions: dict[tuple[str, bool], str] | None = None
) -> str:
    """Where the client resumes if it reconnects now: everything before it was delivered or filtered out."""
    if sub.conflated:
        return sub.sent_pos
    view = (sub.channel, sub.delayed)
    if positions is not None and view in positions:
        return positions[view]
    encoded = encode_position(app[REPLICA].view(sub.channel, sub.delayed).position)
    if positions is not None:
        positions[view] = encoded
    return encoded
