"""Typed application keys shared by the sidecar's modules (aiohttp ``web.AppKey``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline.settings import Settings
from web.principal import Principal

if TYPE_CHECKING:
    from web.replica import Replica

__all__ = ["SETTINGS", "REDIS", "ENGINE", "REPLICA", "INSTANCE_ID", "PRINCIPAL"]

SETTINGS = web.AppKey("settings", Settings)
REDIS = web.AppKey("redis", Redis)
ENGINE = web.AppKey("engine", AsyncEngine)
REPLICA: web.AppKey[Replica] = web.AppKey("replica")
# Unique per sidecar process: connection counts in Redis are kept per instance.
INSTANCE_ID = web.AppKey("instance_id", str)
# request[PRINCIPAL] is set by web.auth's middleware for every request.
PRINCIPAL = web.RequestKey("principal", Principal)
