"""The sidecar's aiohttp application: ``create_app()`` wires resources, middlewares and routes."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator

from aiohttp import web
from redis.asyncio import Redis

from pipeline.db import make_engine
from pipeline.settings import Settings, get_settings
from pipeline.storage.migrate import upgrade
from web import alert_notices, alert_routes, auth, ops, query, rest, stream
from web.history_writer import history_writer_ctx
from web.keys import ENGINE, INSTANCE_ID, REDIS, REPLICA, SETTINGS
from web.replica import Replica

__all__ = ["create_app"]


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


async def _redis(app: web.Application) -> AsyncIterator[None]:
    app[REDIS] = Redis.from_url(app[SETTINGS].redis_url)
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
