"""The sidecar's aiohttp application: ``create_app()`` wires resources, middlewares and routes."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator

from aiohttp import web
from redis.asyncio import BlockingConnectionPool, Redis

from pipeline.db import make_engine
from pipeline.settings import Settings, get_settings
from pipeline.storage.migrate import upgrade
from web import alert_notices, alert_routes, auth, ops, query, rest, stream
from web.history_writer import history_writer_ctx
from web.keys import ENGINE, INSTANCE_ID, REDIS, REPLICA, SETTINGS
from web.replica import Replica

__all__ = ["REDIS_MAX_CONNECTIONS", "REDIS_POOL_TIMEOUT_S", "create_app", "redis_client"]

# Connections to Redis per sidecar. Every request takes one for about a round trip, so this many are plenty;
# a burst beyond it waits for a free one (BlockingConnectionPool) instead of failing, as redis-py's default
# pool does (MaxConnectionsError), which made the rate limits fail open and leaked connection slots.
REDIS_MAX_CONNECTIONS = 64
# The longest a command waits for a free connection; callers bound their own waits more tightly.
REDIS_POOL_TIMEOUT_S = 5.0


def create_app(settings: Settings | None = None) -> web.Application:
    settings = settings or get_settings()
    app = web.Application(client_max_size=64 * 1024, middlewares=[ops.error_middleware, auth.middleware])
    app[SETTINGS] = settings
    app[INSTANCE_ID] = f"{socket.gethostname()}-{os.getpid()}-{id(app):x}"
    app.cleanup_ctx.append(_redis)
    app.cleanup_ctx.append(_engine)
    app.cleanup_ctx.append(_replica)
    app.cleanup_ctx.append(history_writer_ctx)
    for module in (ops, auth, rest, query, stream, alert_routes, alert_notices):
        module.setup(app)
    return app


def redis_client(url: str, max_connections: int = REDIS_MAX_CONNECTIONS) -> Redis:
    """The sidecar's Redis client: a bounded pool whose callers wait their turn when it is exhausted."""
    pool = BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=REDIS_POOL_TIMEOUT_S)
    return Redis.from_pool(pool)  # closing the client closes the pool


async def _redis(app: web.Application) -> AsyncIterator[None]:
    app[REDIS] = redis_client(app[SETTINGS].redis_url)
    yield
    await app[REDIS].aclose()


async def _engine(app: web.Application) -> AsyncIterator[None]:
    # Migrations run at start (under a lock, so sidecars starting together take turns).
    await upgrade(app[SETTINGS])
    app[ENGINE] = make_engine(app[SETTINGS])
    yield
    await app[ENGINE].dispose()


async def _replica(app: web.Application) -> AsyncIterator[None]:
    replica = Replica(app[SETTINGS])
    app[REPLICA] = replica
    await replica.start()
    yield
    await replica.stop()
