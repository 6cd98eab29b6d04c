"""``/v1/alerts/webhooks``: the caller's webhook endpoints, their Standard Webhooks signing secrets (shown in
full only at creation and rotation) and re-enabling an endpoint the delivery loop disabled."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, Literal

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipeline.alerting.durations import Duration
from pipeline.alerting.targets import MAX_URL_LENGTH, TargetError, check_resolved_host, validate_webhook_url
from pipeline.storage import webhook_endpoints
from pipeline.storage.alert_rules import rules_using_endpoint
from pipeline.storage.models import WebhookEndpoint
from pipeline.storage.webhook_endpoints import SECRET_PREFIX
from web.alert_http import (
    PAGE_PARAMS,
    Page,
    caller,
    iso,
    next_cursor,
    not_found,
    now,
    page_of,
    read_json,
    validated,
)
from web.errors import ApiError
from web.keys import ENGINE, SETTINGS
from web.openapi import Operation, Param

__all__ = [
    "EndpointSpec",
    "RotateBody",
    "SecretInfo",
    "EndpointOut",
    "CreatedEndpoint",
    "EndpointList",
    "ROUTES",
]

DEFAULT_OVERLAP = timedelta(hours=24)
MAX_OVERLAP = timedelta(days=7)
# How much of a secret listings show: enough to tell two apart, far too little to sign with.
SHOWN_SECRET_CHARS = 4


class EndpointSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    url: Annotated[str, Field(min_length=1, max_length=MAX_URL_LENGTH, description="https (or http) URL")]
    description: Annotated[str, Field(max_length=500)] = ""


class RotateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    overlap: Duration = Field(
        int(DEFAULT_OVERLAP.total_seconds()),
        description=f"how long the previous secret keeps signing, e.g. '24h' (default), at most "
        f"{MAX_OVERLAP.days}d; '0s' stops it at once",
    )

    @field_validator("overlap")
    @classmethod
    def _bounded(cls, seconds: int) -> int:
        if seconds > MAX_OVERLAP.total_seconds():
            raise ValueError(f"overlap may be at most {MAX_OVERLAP.days}d")
        return seconds


class SecretInfo(BaseModel):
    prefix: str = Field(description=f"{SECRET_PREFIX} and the first {SHOWN_SECRET_CHARS} characters, then …")
    created_at: str
    expires_at: str | None = Field(description="null for the current secret; set on the previous one")


class EndpointOut(BaseModel):
    id: str
    url: str
    description: str
    created_at: str
    status: Literal["enabled", "disabled"]
    disabled_at: str | None
    disabled_reason: str | None
    failing_since: str | None = Field(description="start of the current run of failed deliveries")
    last_success_at: str | None
    secrets: list[SecretInfo] = Field(description="active secrets, newest (the one that signs first) first")


class CreatedEndpoint(EndpointOut):
    secret: str = Field(description="the new signing secret (whsec_...), shown only now: keep it")


class EndpointList(Page):
    endpoints: list[EndpointOut]


def _endpoint_json(row: WebhookEndpoint) -> dict[str, Any]:
    shown = [
        {
            "prefix": entry["secret"][: len(SECRET_PREFIX) + SHOWN_SECRET_CHARS] + "…",
            "created_at": entry["created_at"],
            "expires_at": entry.get("expires_at"),
        }
        for entry in webhook_endpoints.active_secrets(row, now())
    ]
    return {
        "id": row.id,
        "url": row.url,
        "description": row.description,
        "created_at": iso(row.created_at),
        "status": "disabled" if row.disabled_at is not None else "enabled",
        "disabled_at": iso(row.disabled_at),
        "disabled_reason": row.disabled_reason,
        "failing_since": iso(row.failing_since),
        "last_success_at": iso(row.last_success_at),
        "secrets": shown,
    }


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


async def _checked_url(request: web.Request, url: str) -> str:
    try:
        host, port = validate_webhook_url(url)
        await check_resolved_host(host, port, request.app[SETTINGS].webhook_allow_private)
    except TargetError as exc:
        raise ApiError(400, "invalid_webhook_url", f"url: {exc}.", field="url", reason=str(exc)) from None
    return url


async def create_endpoint(request: web.Request) -> web.Response:
    principal = caller(request)
    spec = validated(EndpointSpec, await read_json(request))
    url = await _checked_url(request, spec.url)
    row, secret = await webhook_endpoints.create_endpoint(
        request.app[ENGINE], owner=principal.owner, url=url, description=spec.description
    )
    return _json({**_endpoint_json(row), "secret": secret}, 201)


async def list_endpoints(request: web.Request) -> web.Response:
    principal = caller(request)
    after, limit = page_of(request)
    rows = await webhook_endpoints.list_endpoints(
        request.app[ENGINE], owner=principal.owner, after=after, limit=limit
    )
    cursor = next_cursor(rows, limit, lambda row: (row.created_at, row.id))
    return _json({"endpoints": [_endpoint_json(row) for row in rows], "next_cursor": cursor})


def _endpoint_id(request: web.Request) -> str:
    return request.match_info["endpoint_id"]


async def get_endpoint(request: web.Request) -> web.Response:
    principal = caller(request)
    row = await webhook_endpoints.get_endpoint(
        request.app[ENGINE], owner=principal.owner, endpoint_id=_endpoint_id(request)
    )
    if row is None:
        raise not_found("webhook endpoint", _endpoint_id(request))
    return _json(_endpoint_json(row))


async def delete_endpoint(request: web.Request) -> web.Response:
    principal = caller(request)
    engine, endpoint_id = request.app[ENGINE], _endpoint_id(request)
    if await webhook_endpoints.get_endpoint(engine, owner=principal.owner, endpoint_id=endpoint_id) is None:
        raise not_found("webhook endpoint", endpoint_id)
    users = await rules_using_endpoint(engine, owner=principal.owner, endpoint_id=endpoint_id)
    if users:
        raise ApiError(
            409, "endpoint_in_use",
            f"Rules {', '.join(users[:5])}{' and more' if len(users) > 5 else ''} notify this endpoint; "
            "remove it from their channels (PUT) or delete them first.",
            rules=users[:100],
        )  # fmt: skip
    await webhook_endpoints.delete_endpoint(engine, owner=principal.owner, endpoint_id=endpoint_id)
    return web.Response(status=204)


async def rotate_secret(request: web.Request) -> web.Response:
    principal = caller(request)
    body = validated(RotateBody, await read_json(request, empty={}))
    rotated = await webhook_endpoints.rotate_secret(
        request.app[ENGINE], owner=principal.owner, endpoint_id=_endpoint_id(request),
        overlap=timedelta(seconds=body.overlap),
    )  # fmt: skip
    if rotated is None:
        raise not_found("webhook endpoint", _endpoint_id(request))
    row, secret = rotated
    return _json({**_endpoint_json(row), "secret": secret})


async def enable_endpoint(request: web.Request) -> web.Response:
    principal = caller(request)
    row = await webhook_endpoints.enable_endpoint(
        request.app[ENGINE], owner=principal.owner, endpoint_id=_endpoint_id(request)
    )
    if row is None:
        raise not_found("webhook endpoint", _endpoint_id(request))
    return _json(_endpoint_json(row))


_TAG = "alerts"
_ID = Param("endpoint_id", "path", "the endpoint's id (ep_...)")
_GONE = {404: "webhook_endpoint_not_found: no such endpoint among yours"}
_URL = "invalid_request (names the field) or invalid_webhook_url (the reason: scheme, private address...)"
ROUTES: tuple[Operation, ...] = (
    Operation("POST", "/v1/alerts/webhooks", "Register a webhook endpoint; its signing secret is shown once",
              _TAG, response=CreatedEndpoint, status=201, request=EndpointSpec, auth="required",
              handler=create_endpoint, errors={400: _URL}),
    Operation("GET", "/v1/alerts/webhooks", "The caller's webhook endpoints (secrets masked)", _TAG,
              response=EndpointList, params=PAGE_PARAMS, auth="required", handler=list_endpoints,
              errors={400: "invalid_request: a bad limit or cursor"}),
    Operation("GET", "/v1/alerts/webhooks/{endpoint_id}", "One endpoint (secrets masked)", _TAG,
              response=EndpointOut, params=(_ID,), auth="required", handler=get_endpoint, errors=_GONE),
    Operation("DELETE", "/v1/alerts/webhooks/{endpoint_id}", "Delete an endpoint no rule notifies", _TAG,
              status=204, params=(_ID,), auth="required", handler=delete_endpoint,
              errors={**_GONE, 409: "endpoint_in_use: rules (listed) still notify it"}),
    Operation("POST", "/v1/alerts/webhooks/{endpoint_id}/rotate",
              "New signing secret (shown once); the previous one signs too until its expires_at", _TAG,
              response=CreatedEndpoint, request=RotateBody, params=(_ID,), auth="required",
              handler=rotate_secret, errors={400: "invalid_request: overlap", **_GONE},
              description="The body is optional: {\"overlap\": \"24h\"} is the default."),
    Operation("POST", "/v1/alerts/webhooks/{endpoint_id}/enable",
              "Re-enable an endpoint disabled after failing deliveries", _TAG, response=EndpointOut,
              params=(_ID,), auth="required", handler=enable_endpoint, errors=_GONE),
)  # fmt: skip
