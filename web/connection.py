"""One WebSocket client: its subscriptions, direct writes while it keeps up, a bounded queue when not."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from aiohttp import WSMsgType, web

from pipeline.filters import Filter
from web import metrics
from web.frames import text_frame
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
# Bytes a socket may hold unsent before a client counts as behind and its messages queue instead.
WRITE_BUFFER_LIMIT = 256 * 1024


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
    # The start of every update message of this subscription, encoded once (web.hub.update_message).
    update_prefix: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.update_prefix = b'{"type":"update","sub":%s,"channel":%s,"key":' % (
            orjson.dumps(self.id),
            orjson.dumps(self.channel),
        )


class Connection:
    """Writes what the hub hands it without ever waiting, and queues what the socket cannot take yet.

    While the socket keeps up, a message is written to the transport at once (``web.frames``): no task
    switch per message, and no task at all per idle connection. Once the transport holds
    ``WRITE_BUFFER_LIMIT`` bytes the client is behind, so messages queue and a drain task (started on
    demand, ended when the queue is empty) writes them at the client's pace. A client whose queue fills
    is sent ``resync_required`` for each subscription with the position to resume from, and nothing more
    until it resubscribes. Memory per client is bounded by the limit and ``max_queue``, and other
    clients are never held back.
    """

    def __init__(
        self,
        conn_id: str,
        principal: Principal,
        ws: web.WebSocketResponse,
        transport: asyncio.Transport,
        max_queue: int,
        send_timeout_s: float,
    ) -> None:
        self.id = conn_id
        self.principal = principal
        self.ws = ws
        self.transport = transport
        self.max_queue = max_queue
        self.send_timeout_s = send_timeout_s
        self.subs: dict[str, Subscription] = {}
        self.queue: deque[tuple[Subscription | None, str, bytes]] = deque()
        self._drainer: asyncio.Task[None] | None = None
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
        # Straight to the socket only when nothing is queued ahead: order is the stream's order.
        if not self.queue and self._has_room():
            self._write(sub, pos, data)
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
        self._start_drainer()

    def _has_room(self) -> bool:
        transport = self.transport
        return not transport.is_closing() and transport.get_write_buffer_size() < WRITE_BUFFER_LIMIT

    def _write(self, sub: Subscription | None, pos: str, data: bytes) -> None:
        self.transport.write(text_frame(data))
        self.messages_out += 1
        if sub is not None and pos:
            sub.sent_pos = pos

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
            # The notice is written by the drain task, with the position of the last update actually
            # handed to the socket.
            self.queue.append((sub, RESYNC, b""))
        self._start_drainer()

    def _start_drainer(self) -> None:
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.get_running_loop().create_task(self._drain(), name=f"ws-drain-{self.id}")

    async def _drain(self) -> None:
        """Writes the queue at the client's pace; one reading nothing for ``send_timeout_s`` is closed."""
        ws = self.ws
        while self.queue and not ws.closed:
            sub, pos, data = self.queue.popleft()
            if pos == RESYNC and sub is not None:
                data, pos = _resync_notice(sub), ""
            if self._has_room():
                self._write(sub, pos, data)
                continue
            try:
                # aiohttp's send_frame waits for the transport to drain (flow control) after writing.
                async with asyncio.timeout(self.send_timeout_s):
                    await ws.send_frame(data, WSMsgType.TEXT)
            except (TimeoutError, ConnectionResetError):
                await self.close(CloseCode.SLOW_CONSUMER, "slow consumer: nothing read for too long")
                return
            self.messages_out += 1
            if sub is not None and pos:
                sub.sent_pos = pos

    async def wait_writable(self) -> None:
        """Waits until the queue is at most half full: read-backs go at the client's pace, not Kafka's."""
        while len(self.queue) > self.max_queue // 2 and not self.closing:
            await asyncio.sleep(0.005)

    async def close(self, code: int, reason: str) -> None:
        self.closing = True
        self.queue.clear()
        if not self.ws.closed:
            await self.ws.close(code=code, message=reason.encode()[:120])

    async def stop(self) -> None:
        """The connection is gone: nothing more is written, and the drain task (if any) ends."""
        self.closing = True
        self.queue.clear()
        drainer = self._drainer
        if drainer is not None and not drainer.done() and drainer is not asyncio.current_task():
            drainer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drainer

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
