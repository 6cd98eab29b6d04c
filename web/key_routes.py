"""The /v1/keys routes (create: secret shown once; list; revoke) and revocations shared by all sidecars."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from pipeline.storage import api_keys
from pipeline.storage.models import ApiKey
from pipeline.tiers import TIERS
from web.auth import KEY_CACHE_TTL_S, forget_all_keys, forget_key, is_admin
from web.errors import ApiError
from web.keys import ENGINE, INSTANCE_ID, PRINCIPAL, REDIS, SETTINGS
from web.principal import Principal

__all__ = ["CreateKeyBody", "public", "key_revoked", "control_channel", "setup"]

CONTROL_SUBSCRIBE_TIMEOUT_S = 5.0
log = logging.getLogger(__name__)


class CreateKeyBody(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    # Required for the admin and for anonymous callers; a key holder's own owner when omitted.
    owner: str | None = Field(None, min_length=1, max_length=200)
    tier: str = "free"
    label: str = Field("", max_length=200)

    @field_validator("tier")
    @classmethod
    def _known_tier(cls, tier: str) -> str:
        if tier not in TIERS:
            raise ValueError(f"must be one of {', '.join(TIERS)}")
        return tier


def _invalid_request(field: str, problem: str) -> ApiError:
    return ApiError(400, "invalid_request", f"Field {field!r} is invalid: {problem}.", field=field)


async def _body(request: web.Request) -> CreateKeyBody:
    raw = await request.read()
    try:
        document = orjson.loads(raw or b"{}")
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "invalid_request", f"The request body is not valid JSON: {exc}.") from exc
    try:
        return CreateKeyBody.model_validate(document)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "body"
        got = first.get("input")
        shown = f" (got {got!r})" if isinstance(got, str | int | float) and len(repr(got)) <= 60 else ""
        raise _invalid_request(field, f"{first['msg']}{shown}") from exc


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    # SQLite hands timestamps back without their zone; they were written in UTC.
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).isoformat()


def public(row: ApiKey) -> dict[str, Any]:
    """A key as listings show it: never its secret or hash."""
    return {
        "id": row.id,
        "owner": row.owner,
        "tier": row.tier,
        "label": row.label,
        "created_at": _iso(row.created_at),
        "revoked_at": _iso(row.revoked_at),
    }


def _key_required(what: str) -> ApiError:
    return ApiError(
        401,
        "key_required",
        f"{what} needs an API key: pass one as 'Authorization: Bearer <key>'.",
        headers={"WWW-Authenticate": "Bearer"},
    )


async def create_key(request: web.Request) -> web.Response:
    body = await _body(request)
    principal: Principal = request[PRINCIPAL]
    engine = request.app[ENGINE]
    if is_admin(request):
        if body.owner is None:
            raise _invalid_request("owner", "Field required")
        owner = body.owner
    elif body.tier != "free":
        raise ApiError(
            403,
            "admin_required",
            f"Only the admin token may create {body.tier!r} keys; "
            "self-service keys are free tier (omit 'tier').",
            tier=body.tier,
        )
    elif principal.key_id is not None:
        owner = body.owner or principal.owner
        if owner != principal.owner:
            raise ApiError(
                403,
                "forbidden",
                f"A key of owner {principal.owner!r} may only create keys for that owner, not {owner!r}.",
            )
    elif body.owner is None:
        raise _invalid_request("owner", "Field required")
    elif await api_keys.owner_exists(engine, body.owner):
        # Without this anyone could mint a key for an existing owner and then list or revoke its keys.
        raise ApiError(
            409,
            "owner_taken",
            f"Owner {body.owner!r} already has keys; send one of them "
            "(Authorization: Bearer <key>) to create another.",
            owner=body.owner,
        )
    else:
        owner = body.owner
    row, key = await api_keys.create_key(engine, owner=owner, tier=body.tier, label=body.label)
    # The only time the secret leaves the server: it is stored as a hash.
    return web.json_response({**public(row), "key": key}, status=201)


async def list_keys(request: web.Request) -> web.Response:
    principal: Principal = request[PRINCIPAL]
    wanted = request.query.get("owner")
    if is_admin(request):
        rows = await api_keys.list_keys(request.app[ENGINE], wanted)
    elif principal.key_id is None:
        raise _key_required("Listing keys")
    elif wanted is not None and wanted != principal.owner:
        raise ApiError(
            403,
            "forbidden",
            f"A key of owner {principal.owner!r} may only list that owner's keys, not {wanted!r}.",
        )
    else:
        rows = await api_keys.list_keys(request.app[ENGINE], principal.owner)
    return web.json_response({"keys": [public(row) for row in rows]})


async def revoke_key(request: web.Request) -> web.Response:
    principal: Principal = request[PRINCIPAL]
    key_id = request.match_info["key_id"]
    admin = is_admin(request)
    if not admin and principal.key_id is None:
        raise _key_required("Revoking a key")
    row = await api_keys.revoke_key(request.app[ENGINE], key_id, owner=None if admin else principal.owner)
    if row is None:
        # The same answer for another owner's key as for no key, so ids of other owners cannot be probed.
        raise ApiError(
            404, "key_not_found", f"There is no key {key_id[:40]!r} among the keys you may manage."
        )
    await key_revoked(request.app, key_id)
    return web.Response(status=204)


async def key_revoked(app: web.Application, key_id: str) -> None:
    """After a revocation is stored: forget the key here, run the hooks, and tell the other sidecars."""
    await forget_key(app, key_id)
    message = {"type": "key_revoked", "key_id": key_id, "origin": app[INSTANCE_ID]}
    try:
        await app[REDIS].publish(control_channel(app), orjson.dumps(message))
    except (RedisError, OSError) as exc:
        log.warning(
            "could not announce the revocation of %s; other sidecars drop it within %s s: %r",
            key_id,
            KEY_CACHE_TTL_S,
            exc,
        )


def control_channel(app: web.Application) -> str:
    return f"{app[SETTINGS].app_id}:control"


async def _subscribe(app: web.Application) -> PubSub:
    pubsub = app[REDIS].pubsub()
    try:
        async with asyncio.timeout(CONTROL_SUBSCRIBE_TIMEOUT_S):
            await pubsub.subscribe(control_channel(app))
            # Wait for Redis's confirmation: from here on, every revocation announced reaches this sidecar.
            while True:
                reply = await pubsub.get_message(timeout=CONTROL_SUBSCRIBE_TIMEOUT_S)
                if reply is not None and reply.get("type") == "subscribe":
                    break
    except BaseException:
        await _close(pubsub)
        raise
    return pubsub


async def _listen(app: web.Application, pubsub: PubSub | None) -> None:
    backoff = 1.0
    try:
        while True:
            try:
                pubsub = pubsub or await _subscribe(app)
                backoff = 1.0
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        await _on_control(app, message["data"])
            except (RedisError, OSError, TimeoutError) as exc:
                log.warning("control channel unavailable, resubscribing in %.0f s: %r", backoff, exc)
            if pubsub is not None:
                await _close(pubsub)
                pubsub = None
            # Revocations announced while unsubscribed were missed: look every key up again.
            forget_all_keys(app)
            await asyncio.sleep(backoff)
            # Capped low: once Redis is back, announcements are missed until this sidecar resubscribes.
            backoff = min(backoff * 2, KEY_CACHE_TTL_S)
    finally:
        if pubsub is not None:
            await _close(pubsub)


async def _on_control(app: web.Application, data: bytes) -> None:
    try:
        message = orjson.loads(data)
    except orjson.JSONDecodeError:
        message = None
    if not isinstance(message, dict):
        log.warning("ignoring a control message that is not a JSON object: %r", data[:200])
        return
    # The channel is shared with other kinds of control messages; this sidecar already handled its own.
    if message.get("type") == "key_revoked" and message.get("origin") != app[INSTANCE_ID]:
        await forget_key(app, str(message["key_id"]))


async def _control_ctx(app: web.Application) -> AsyncIterator[None]:
    pubsub: PubSub | None
    try:
        pubsub = await _subscribe(app)
    except (RedisError, OSError, TimeoutError) as exc:
        log.warning("cannot subscribe to the control channel yet, retrying in the background: %r", exc)
        pubsub = None
    listener = asyncio.create_task(_listen(app, pubsub), name="control-listener")
    yield
    listener.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await listener


async def _close(pubsub: PubSub) -> None:
    await pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py leaves PubSub.aclose unannotated


def setup(app: web.Application) -> None:
    app.cleanup_ctx.append(_control_ctx)
    app.router.add_post("/v1/keys", create_key)
    app.router.add_get("/v1/keys", list_keys)
    app.router.add_delete("/v1/keys/{key_id}", revoke_key)
