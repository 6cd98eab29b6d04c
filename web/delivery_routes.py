"""The read side of delivery: the caller's notifications (the outbox) with their delivery log, manual replay,
and alert history (``/v1/alerts/notifications``, ``/v1/alerts/events``). The notifier writes these tables."""

from __future__ import annotations

from typing import Any, get_args

import orjson
from aiohttp import web
from pydantic import BaseModel, Field

from pipeline.alerting.messages import InstanceState
from pipeline.storage import alert_reads
from pipeline.storage.models import AlertEvent, DeliveryAttempt, Notification
from pipeline.storage.webhook_endpoints import get_endpoint
from web.alert_http import PAGE_PARAMS, Page, caller, iso, next_cursor, not_found, page_of, query_time
from web.errors import ApiError
from web.keys import ENGINE
from web.openapi import Operation, Param

__all__ = [
    "NOTIFICATION_STATUSES",
    "NotificationOut",
    "AttemptOut",
    "NotificationDetail",
    "NotificationList",
    "EventOut",
    "EventList",
    "ROUTES",
]

NOTIFICATION_STATUSES = ("pending", "delivered", "abandoned", "muted", "held")
STATES: tuple[str, ...] = get_args(InstanceState)


class NotificationOut(BaseModel):
    id: str = Field(description="the webhook-id: the same on every attempt and replay")
    rule_id: str
    group_key: str
    target_type: str = Field(description="webhook, email or websocket")
    target: str = Field(description="endpoint id, email address, or owner")
    status: str = Field(description=", ".join(NOTIFICATION_STATUSES))
    attempts: int
    next_attempt_at: str | None
    created_at: str
    delivered_at: str | None
    last_error: str | None
    replay: bool = Field(description="a manual replay was asked for; its attempts are logged as replays")


class AttemptOut(BaseModel):
    attempt: int
    started_at: str
    target: str
    request_headers: dict[str, str]
    status_code: int | None
    latency_ms: float
    error: str | None
    response_excerpt: str | None
    replay: bool


class NotificationDetail(NotificationOut):
    payload: dict[str, Any]
    delivery_attempts: list[AttemptOut] = Field(description="the delivery log, oldest first")


class NotificationList(Page):
    notifications: list[NotificationOut]


class EventOut(BaseModel):
    id: int
    rule_id: str
    fingerprint: str
    state: str
    as_of: str
    source: str
    transition: dict[str, Any] = Field(description="the AlertTransition as alerts.triggered carried it")


class EventList(Page):
    events: list[EventOut]


def _notification_json(row: Notification) -> dict[str, Any]:
    return {
        "id": row.id,
        "rule_id": row.rule_id,
        "group_key": row.group_key,
        "target_type": row.target_type,
        "target": row.target,
        "status": row.status,
        "attempts": row.attempts,
        "next_attempt_at": iso(row.next_attempt_at),
        "created_at": iso(row.created_at),
        "delivered_at": iso(row.delivered_at),
        "last_error": row.last_error,
        "replay": bool(row.replay),
    }


def _attempt_json(row: DeliveryAttempt) -> dict[str, Any]:
    return {
        "attempt": row.attempt,
        "started_at": iso(row.started_at),
        "target": row.target,
        "request_headers": row.request_headers,
        "status_code": row.status_code,
        "latency_ms": row.latency_ms,
        "error": row.error,
        "response_excerpt": row.response_excerpt,
        "replay": bool(row.replay),
    }


def _event_json(row: AlertEvent) -> dict[str, Any]:
    return {
        "id": row.id,
        "rule_id": row.rule_id,
        "fingerprint": row.fingerprint,
        "state": row.state,
        "as_of": iso(row.as_of),
        "source": row.source,
        "transition": row.transition,
    }


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def _one_of(request: web.Request, name: str, allowed: tuple[str, ...]) -> str | None:
    value = request.query.get(name)
    if value is not None and value not in allowed:
        raise ApiError(
            400, "invalid_request",
            f"Query parameter {name!r} must be one of {', '.join(allowed)}, not {value[:30]!r}.",
            field=name,
        )  # fmt: skip
    return value


async def list_notifications(request: web.Request) -> web.Response:
    principal = caller(request)
    after, limit = page_of(request)
    rows = await alert_reads.list_notifications(
        request.app[ENGINE], owner=principal.owner, after=after, limit=limit,
        status=_one_of(request, "status", NOTIFICATION_STATUSES), rule_id=request.query.get("rule_id"),
    )  # fmt: skip
    cursor = next_cursor(rows, limit, lambda row: (row.created_at, row.id))
    return _json({"notifications": [_notification_json(row) for row in rows], "next_cursor": cursor})


async def _detail(request: web.Request, row: Notification, owner: str) -> dict[str, Any]:
    attempts = await alert_reads.attempts_of(request.app[ENGINE], owner=owner, notification_id=row.id)
    return {
        **_notification_json(row),
        "payload": row.payload,
        "delivery_attempts": [_attempt_json(a) for a in attempts],
    }


async def get_notification(request: web.Request) -> web.Response:
    principal = caller(request)
    notification_id = request.match_info["notification_id"]
    row = await alert_reads.get_notification(
        request.app[ENGINE], owner=principal.owner, notification_id=notification_id
    )
    if row is None:
        raise not_found("notification", notification_id)
    return _json(await _detail(request, row, principal.owner))


async def replay_notification(request: web.Request) -> web.Response:
    principal = caller(request)
    engine, notification_id = request.app[ENGINE], request.match_info["notification_id"]
    row = await alert_reads.get_notification(engine, owner=principal.owner, notification_id=notification_id)
    if row is None:
        raise not_found("notification", notification_id)
    if row.target_type == "webhook":
        endpoint = await get_endpoint(engine, owner=principal.owner, endpoint_id=row.target)
        if endpoint is None:
            raise ApiError(
                409,
                "endpoint_gone",
                f"Webhook endpoint {row.target!r} was deleted; there is nowhere to replay to.",
            )
        if endpoint.disabled_at is not None:
            raise ApiError(
                409, "endpoint_disabled",
                f"Webhook endpoint {row.target!r} is disabled ({endpoint.disabled_reason}); enable it with "
                f"POST /v1/alerts/webhooks/{row.target}/enable, then replay.",
            )  # fmt: skip
    replayed = await alert_reads.request_replay(
        engine, owner=principal.owner, notification_id=notification_id
    )
    if replayed is None:
        raise not_found("notification", notification_id)
    return _json(await _detail(request, replayed, principal.owner), 202)


async def list_events(request: web.Request) -> web.Response:
    principal = caller(request)
    after, limit = page_of(request)
    since, until = query_time(request.query, "from"), query_time(request.query, "to")
    rows = await alert_reads.list_events(
        request.app[ENGINE], owner=principal.owner, after=after, limit=limit,
        rule_id=request.query.get("rule_id"), state=_one_of(request, "state", STATES),
        since=since, until=until,
    )  # fmt: skip
    cursor = next_cursor(rows, limit, lambda row: (row.as_of, row.id))
    return _json({"events": [_event_json(row) for row in rows], "next_cursor": cursor})


_TAG = "alerts"
_ID = Param("notification_id", "path", "the notification's id (its webhook-id)")
_GONE = {404: "notification_not_found: no such notification among yours"}
_RULE = Param("rule_id", "query", "only this rule's", required=False)
_STATUS = Param("status", "query", ", ".join(NOTIFICATION_STATUSES), required=False)
ROUTES: tuple[Operation, ...] = (
    Operation("GET", "/v1/alerts/notifications", "The caller's notifications (outbox), newest first", _TAG,
              response=NotificationList, auth="required", handler=list_notifications,
              params=(*PAGE_PARAMS, _STATUS, _RULE),
              errors={400: "invalid_request: a bad limit, cursor or status"}),
    Operation("GET", "/v1/alerts/notifications/{notification_id}", "A notification with its delivery log",
              _TAG, response=NotificationDetail, params=(_ID,), auth="required", handler=get_notification,
              errors=_GONE),
    Operation("POST", "/v1/alerts/notifications/{notification_id}/replay",
              "Deliver a notification again now (same webhook-id; attempts logged as replays)", _TAG,
              response=NotificationDetail, status=202, params=(_ID,), auth="required",
              handler=replay_notification,
              errors={**_GONE, 409: "endpoint_gone or endpoint_disabled: the webhook cannot be sent to"}),
    Operation("GET", "/v1/alerts/events", "The caller's alert history (transitions), newest first", _TAG,
              response=EventList, auth="required", handler=list_events,
              params=(*PAGE_PARAMS, _RULE, Param("state", "query", ", ".join(STATES), required=False),
                      Param("from", "query", "as_of at or after (ISO 8601)", required=False),
                      Param("to", "query", "as_of before (ISO 8601)", required=False)),
              errors={400: "invalid_request: a bad limit, cursor, state or time"}),
)  # fmt: skip
