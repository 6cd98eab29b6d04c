"""Helpers of the sidecar tests: run real sidecars on loopback, publish derived updates, WebSocket clients."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from aiokafka import AIOKafkaProducer

from pipeline.settings import Settings
from pipeline.storage.migrate import upgrade
from pipeline.topics import ensure_topics, topic_name
from tests.integration.support import free_port
from web.app import create_app


@dataclass
class Sidecar:
    url: str
    app: web.Application
    runner: web.AppRunner

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/v1/stream"


@asynccontextmanager
async def running_sidecar(settings: Settings) -> AsyncIterator[Sidecar]:
    """A sidecar (``create_app``) served on a free loopback port, ready once its replica caught up."""
    await ensure_topics(settings)
    await upgrade(settings)
    app = create_app(settings)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    sidecar = Sidecar(f"http://127.0.0.1:{port}", app, runner)
    try:
        await wait_ready(sidecar)
        yield sidecar
    finally:
        await runner.cleanup()


async def wait_ready(sidecar: Sidecar, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while True:
            async with http.get(sidecar.url + "/readyz") as response:
                body = await response.json()
                if response.status == 200:
                    return
            assert time.monotonic() < deadline, f"sidecar not ready: {body}"
            await asyncio.sleep(0.2)


async def publish(
    settings: Settings, logical: str, items: Iterable[tuple[str, dict[str, Any]]], per_s: float | None = None
) -> int:
    """Sends derived-topic values as the worker does (key -> partition by Kafka's default hash)."""
    await ensure_topics(settings)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=5)
    await producer.start()
    try:
        n = 0
        started = time.monotonic()
        for key, value in items:
            await producer.send(topic_name(settings, logical), orjson.dumps(value), key=key.encode())
            n += 1
            if per_s and n % 100 == 0:
                await asyncio.sleep(max(0.0, started + n / per_s - time.monotonic()))
        await producer.flush()
        return n
    finally:
        await producer.stop()


@dataclass
class Client:
    """A WebSocket client that records every message it receives, with its arrival time."""

    ws: aiohttp.ClientWebSocketResponse
    session: aiohttp.ClientSession
    received: list[dict[str, Any]] = field(default_factory=list)
    arrival: list[float] = field(default_factory=list)

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send_str(orjson.dumps(message).decode())

    async def next(self, kind: str | None = None, timeout: float = 30.0) -> dict[str, Any]:
        """The next message (of ``kind``, skipping heartbeats and other kinds)."""
        deadline = time.monotonic() + timeout
        while True:
            message = await self.ws.receive(timeout=max(0.01, deadline - time.monotonic()))
            assert message.type == aiohttp.WSMsgType.TEXT, f"expected text, got {message.type} {message.data}"
            body = orjson.loads(message.data)
            self.received.append(body)
            self.arrival.append(time.time())
            if kind is None or body["type"] == kind:
                return body  # type: ignore[no-any-return]

    async def updates(self, count: int, timeout: float = 60.0) -> list[dict[str, Any]]:
        got = []
        while len(got) < count:
            body = await self.next(timeout=timeout)
            if body["type"] == "update":
                got.append(body)
            assert body["type"] != "resync_required", body
        return got

    async def close(self) -> None:
        await self.ws.close()
        await self.session.close()


async def connect(sidecar: Sidecar, key: str | None = None) -> Client:
    session = aiohttp.ClientSession()
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    ws = await session.ws_connect(sidecar.ws_url, headers=headers, max_msg_size=16 * 1024 * 1024)
    client = Client(ws, session)
    welcome = await client.next("welcome")
    assert welcome["type"] == "welcome"
    return client


async def subscribe(client: Client, **options: Any) -> dict[str, Any]:
    await client.send({"op": "subscribe", "id": "c1", **options})
    while True:
        body = await client.next()
        if body["type"] in ("subscribed", "error"):
            return body


class RawClient:
    """A WebSocket client on a bare socket with a small receive buffer, that reads only when told to.

    aiohttp's client reads frames into memory as they come, so it is never "slow"; a real slow
    reader is a socket nobody reads.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, sidecar: Sidecar, key: str) -> RawClient:
        import base64
        import os
        import socket

        host, port = sidecar.url.removeprefix("http://").split(":")
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((host, int(port)))
        sock.setblocking(False)
        reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 20)
        nonce = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET /v1/stream HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {nonce}\r\nSec-WebSocket-Version: 13\r\n"
                f"Authorization: Bearer {key}\r\n\r\n"
            ).encode()
        )
        status = await reader.readuntil(b"\r\n\r\n")
        assert status.startswith(b"HTTP/1.1 101"), status
        return cls(reader, writer)

    def send(self, message: dict[str, Any]) -> None:
        import os
        import struct

        payload = orjson.dumps(message)
        mask = os.urandom(4)
        assert len(payload) < 126
        header = struct.pack("!BB", 0x81, 0x80 | len(payload)) + mask
        self.writer.write(header + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    async def next(self) -> dict[str, Any]:
        while True:
            opcode, data = await self._frame()
            if opcode == 0x1:
                return orjson.loads(data)  # type: ignore[no-any-return]
            assert opcode in (0x9, 0xA), f"expected a text frame, got opcode {opcode}"  # pings pass by

    async def _frame(self) -> tuple[int, bytes]:
        import struct

        first, second = await self.reader.readexactly(2)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", await self.reader.readexactly(8))
        return first & 0x0F, await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()
