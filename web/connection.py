"""One WebSocket client: its subscriptions, a bounded outbound queue and the task that writes it."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from aiohttp import WSMsgType, web

from pipeline.filters import Filter
from web import metrics
from web.principal import Principal
from web.state import Position

__all__ = ["Connection", "Subscription", "CloseCode"]


class CloseCode:
    """WebSocket close codes the sidecar uses (documented in docs/websocket.md)."""

    GOING_AWAY = 1001
    POLICY = 1008
    TOO_BIG = 1009
    KEY_REVOKED = 4001
    SLOW_CONSUMER = 4008
    TOO_MANY_CONNECTIONS = 4029


Mode = Literal["catching_up", "live", "suspended"]
# Queued in place of a position: "write this subscription's resync notice here".
RESYNC = "\x00resync"


@dataclass(eq=False)
class Subscription:
    id: str
    client_id: str | None  # the "id" of the subscribe message, echoed back
    channel: str
    filter: Filter
    delayed: bool
    throttle_ms: int
    conn: Connection
    mode: Mode = "live"
    # Next offset per partition this subscription has not yet been given: anything below is a duplicate.
    next: Position = field(default_factory=dict)
    # Live updates that arrive while the subscription catches up from Kafka, delivered after it.
    pending: list[tuple[Any, str]] = field(default_factory=list)
    # Throttled subscriptions keep the latest update per key until the next flush.
    conflated: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    # Position of the last update handed to the socket; where a resync resumes from.
    sent_pos: str = ""
    last_flush: float = 0.0


class Connection:
    """Queues what the hub hands it without ever waiting; a separate writer drains it to the socket.

    A client slower than the stream fills its queue; then it is sent ``resync_required`` for each
    subscription with the position to resume from, and nothing more until it resubscribes. Memory per
    client is bounded by ``max_queue`` and other clients are never held back.
    """

    def __init__(self, conn_id: str, principal: Principal, ws: web.WebSocketResponse, max_queue: int) -> None:
        self.id = conn_id
        self.principal = principal
        self.ws = ws
        self.max_queue = max_queue
        self.subs: dict[str, Subscription] = {}
        self.queue: deque[tuple[Subscription | None, str, bytes]] = deque()
        self._ready = asyncio.Event()
        self.closing = False
        self.messages_out = 0
        self._tokens = 0.0
        self._tokens_at = time.monotonic()
        self.rejected_in_a_row = 0

    # -- sending -------------------------------------------------------------------------------------
    def send(self, message: dict[str, Any]) -> None:
        """A control message (ack, error, heartbeat). Counted against the bound like updates."""
        self._put(None, "", orjson.dumps(message))

    def offer(self, sub: Subscription, pos: str, data: bytes) -> None:
        """An update (or snapshot chunk) of ``sub``; ``pos`` is where the client resumes after it."""
        if sub.mode == "suspended":
            return
        self._put(sub, pos, data)

    def _put(self, sub: Subscription | None, pos: str, data: bytes) -> None:
        if self.closing:
            return
        if len(self.queue) >= self.max_queue:
            if all(s.mode == "suspended" for s in self.subs.values()):
                # Not even reading its resync notices: let it go rather than hold its messages.
                asyncio.get_running_loop().create_task(self.close(CloseCode.SLOW_CONSUMER, "slow consumer"))
                return
            self.fall_behind()
            if sub is not None:
                return
        self.queue.append((sub, pos, data))
        self._ready.set()

    def fall_behind(self) -> None:
        """The client fell behind: drop what it has not read and tell it where to resume each stream."""
        self.queue.clear()
        metrics.RESYNCS.inc(len(self.subs))
        for sub in self.subs.values():
            if sub.mode == "suspended":
                continue
            sub.mode = "suspended"
            sub.pending.clear()
            sub.conflated.clear()
            # The notice is written by the writer, with the position of the last update it actually
            # handed to the socket (one may be in flight right now).
            self.queue.append((sub, RESYNC, b""))
        self._ready.set()

    async def wait_writable(self) -> None:
        """Waits until the queue is at most half full: read-backs go at the client's pace, not Kafka's."""
        while len(self.queue) > self.max_queue // 2 and not self.closing:
            await asyncio.sleep(0.005)

    async def write_loop(self, send_timeout_s: float) -> None:
        """Drains the queue to the socket; a client that reads nothing for ``send_timeout_s`` is closed."""
        ws = self.ws
        while not ws.closed:
            if not self.queue:
                self._ready.clear()
                await self._ready.wait()
                continue
            sub, pos, data = self.queue.popleft()
            if pos == RESYNC and sub is not None:
                data, pos = _resync_notice(sub), ""
            try:
                # asyncio.timeout, not wait_for: wait_for makes a task per message, and so a loop turn
                # per message, which let a burst outrun even a fast client.
                async with asyncio.timeout(send_timeout_s):
                    await ws.send_frame(data, WSMsgType.TEXT)
            except (TimeoutError, ConnectionResetError):
                await self.close(CloseCode.SLOW_CONSUMER, "slow consumer: nothing read for too long")
                return
            self.messages_out += 1
            metrics.MESSAGES_OUT.inc()
            if sub is not None and pos:
                sub.sent_pos = pos

    async def close(self, code: int, reason: str) -> None:
        self.closing = True
        self.queue.clear()
        self._ready.set()
        if not self.ws.closed:
            await self.ws.close(code=code, message=reason.encode()[:120])

    # -- inbound budget ------------------------------------------------------------------------------
    def take_inbound_token(self, rate_per_s: float) -> bool:
        """Token bucket over client messages: bursts of twice the rate, then the rate."""
        now = time.monotonic()
        capacity = 2 * rate_per_s
        self._tokens = min(capacity, self._tokens + (now - self._tokens_at) * rate_per_s)
        self._tokens_at = now
        if self._tokens < 1:
            self.rejected_in_a_row += 1
            return False
        self._tokens -= 1
        self.rejected_in_a_row = 0
        return True

    def start_budget(self, rate_per_s: float) -> None:
        self._tokens = 2 * rate_per_s


def _resync_notice(sub: Subscription) -> bytes:
    return orjson.dumps(
        {
            "type": "resync_required",
            "sub": sub.id,
            "channel": sub.channel,
            "reason": "slow_consumer",
            "resume": sub.sent_pos,
            "message": "you fell behind the stream; subscribe again with this resume position",
        }
    )
