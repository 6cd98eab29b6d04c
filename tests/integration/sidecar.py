"""Helpers of the sidecar tests: run real sidecars on loopback, real API keys and the auth stack, publish
derived updates, WebSocket clients."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from aiohttp.test_utils import TestServer
from aiokafka import AIOKafkaProducer
from pydantic import SecretStr
from redis.asyncio import Redis
from sqlalchemy import delete
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline.db import make_engine
from pipeline.settings import Settings
from pipeline.storage import migrate
from pipeline.storage.api_keys import create_key
from pipeline.storage.models import ApiKey
from pipeline.topics import ensure_topics, topic_name
from tests.integration.support import free_port
from web import auth, ops
from web.app import create_app
from web.keys import ENGINE, INSTANCE_ID, PRINCIPAL, REDIS, SETTINGS
from web.principal import Principal


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
    await migrate.upgrade(settings)
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


async def new_key(
    settings: Settings, tier: str, *, engine: AsyncEngine | None = None, owner: str | None = None
) -> str:
    """A real API key of ``tier`` stored in PostgreSQL as POST /v1/keys stores it; the whole key, shown once.

    The owner defaults to one named after the settings' app id, so a test's keys can be told from others'.
    """
    own = engine is None
    engine = engine or make_engine(settings)
    try:
        _, key = await create_key(
            engine, owner=owner or f"{settings.app_id}-{tier}", tier=tier, label="integration test"
        )
        return key
    finally:
        if own:
            await engine.dispose()


async def delete_keys(settings: Settings) -> None:
    """Delete the keys ``new_key`` made for these settings (owners named after the app id)."""
    engine = make_engine(settings)
    try:
        async with engine.begin() as connection:
            await connection.execute(delete(ApiKey).where(ApiKey.owner.startswith(f"{settings.app_id}-")))
    finally:
        await engine.dispose()


def bearer(key: str | None) -> dict[str, str]:
    """The header a client sends its key in (docs/keys-and-tiers.md); none for an anonymous client."""
    return {"Authorization": f"Bearer {key}"} if key else {}


def authenticated_app(
    settings: Settings,
    *,
    redis: Redis,
    engine: AsyncEngine,
    clock: Callable[[], float] | None = None,
    key_cache_ttl_s: float = auth.KEY_CACHE_TTL_S,
) -> web.Application:
    """An application with the sidecar's own middlewares and web.auth (keys, rate limits, usage) on the
    given Redis and PostgreSQL, and nothing else yet: the test adds the routes it exercises.

    For tests that fill the replica's views themselves rather than through Kafka; ``redis`` and ``engine``
    stay the caller's to close. ``clock`` replaces Redis's time in the rate limits (see FakeClock).
    """
    app = web.Application(middlewares=[ops.error_middleware, auth.middleware])
    app[SETTINGS] = settings
    app[INSTANCE_ID] = f"test-{uuid.uuid4().hex[:8]}"
    app[REDIS] = redis
    app[ENGINE] = engine
    auth.setup(app, clock=clock, key_cache_ttl_s=key_cache_ttl_s)
    return app


async def clear_redis(settings: Settings, redis: Redis) -> None:
    """Delete everything the settings' app id keeps in Redis (rate limits, slots, usage, cached queries)."""
    keys = [key async for key in redis.scan_iter(match=f"{settings.app_id}:*")]
    if keys:
        await redis.delete(*keys)


class FakeClock:
    """A rate-limit clock the test moves, shared by sidecars: limits then depend on the requests made, not
    on how long they took."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class AuthSidecar:
    """web.auth with its /v1/keys and /v1/usage routes, plus /v1/echo, which answers who the caller is."""

    app: web.Application
    server: TestServer
    session: aiohttp.ClientSession

    async def call(
        self, method: str, path: str, *, key: str | None = None, admin: bool = False, **kwargs: Any
    ) -> tuple[int, Any, dict[str, str]]:
        headers = {**kwargs.pop("headers", {}), **bearer(key)}
        token = self.app[SETTINGS].admin_token
        if admin:
            assert token is not None, "admin calls need settings with an admin token"
            headers |= bearer(token.get_secret_value())
        async with self.session.request(
            method, self.server.make_url(path), headers=headers, **kwargs
        ) as response:
            body = await response.json() if response.content_type == "application/json" else None
            return response.status, body, dict(response.headers)


async def _echo(request: web.Request) -> web.Response:
    principal: Principal = request[PRINCIPAL]
    return web.json_response({**principal.__dict__, "admin": auth.is_admin(request)})


async def _ok(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


StartAuthSidecar = Callable[..., Awaitable[AuthSidecar]]


def owner(settings: Settings, name: str) -> str:
    """An owner name of this test's own (``delete_keys`` removes its keys)."""
    return f"{settings.app_id}-{name}"


@asynccontextmanager
async def admin_settings() -> AsyncIterator[Settings]:
    """Settings of one test with an admin token, on the migrated PostgreSQL; afterwards its keys and what it
    kept in Redis are deleted."""
    tag = uuid.uuid4().hex[:10]
    settings = Settings(app_id=f"llamastream-test-{tag}", admin_token=SecretStr(f"admin-{uuid.uuid4().hex}"))
    assert make_url(settings.database_url).get_backend_name() == "postgresql", (
        f"integration tests need PostgreSQL, got {settings.database_url!r}: set LLAMA_DATABASE_URL"
    )
    await migrate.upgrade(settings)
    try:
        yield settings
    finally:
        await forget_test(settings)


async def forget_test(settings: Settings) -> None:
    """Delete the keys ``new_key`` made for these settings and all the app id keeps in Redis."""
    redis = Redis.from_url(settings.redis_url)
    try:
        await clear_redis(settings, redis)
    finally:
        await redis.aclose()
    await delete_keys(settings)


@asynccontextmanager
async def auth_sidecars(settings: Settings) -> AsyncIterator[StartAuthSidecar]:
    """Start AuthSidecars sharing Redis and PostgreSQL (but not memory), as two processes would."""
    started: list[AuthSidecar] = []

    async def start(
        *,
        clock: FakeClock | None = None,
        key_cache_ttl_s: float = auth.KEY_CACHE_TTL_S,
        redis_url: str | None = None,
        hooks: tuple[auth.RevocationHook, ...] = (),
    ) -> AuthSidecar:
        redis, engine = Redis.from_url(redis_url or settings.redis_url), make_engine(settings)
        app = authenticated_app(
            settings, redis=redis, engine=engine, clock=clock, key_cache_ttl_s=key_cache_ttl_s
        )
        for hook in hooks:
            auth.on_key_revoked(app, hook)
        app.router.add_get("/v1/echo", _echo)
        app.router.add_get("/healthz", _ok)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        sidecar = AuthSidecar(app, server, aiohttp.ClientSession())
        started.append(sidecar)
        return sidecar

    try:
        yield start
    finally:
        for sidecar in reversed(started):
            await sidecar.session.close()
            await sidecar.server.close()
            await sidecar.app[ENGINE].dispose()
            await sidecar.app[REDIS].aclose()


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
        got: list[dict[str, Any]] = []
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
    ws = await session.ws_connect(sidecar.ws_url, headers=bearer(key), max_msg_size=16 * 1024 * 1024)
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
