"""``/v1/alerts/rules``: create, list, read, replace, enable/disable and delete the caller's alert rules.
Each change is stored in PostgreSQL and published to ``alerts.rules`` before the answer
(web/rule_publisher.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import SQLAlchemyError

from pipeline.alerting.rules import ALERT_CHANNELS, Rule, RuleSpec, WebhookTarget
from pipeline.channels import CHANNELS
from pipeline.filters import FilterError, compile_filter
from pipeline.storage import alert_rules
from pipeline.storage.alert_rules import Publish, QuotaExceeded
from pipeline.storage.models import AlertRule
from pipeline.storage.webhook_endpoints import existing_endpoint_ids
from web.alert_http import (
    PAGE_PARAMS,
    Page,
    caller,
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
from web.rule_publisher import RULE_PUBLISHER, PublishFailed

__all__ = ["RuleList", "RulePatch", "ROUTES", "parse_rule_spec"]

T = TypeVar("T")
# Tags of the tagged unions in a rule (condition kinds, target types): left out of error paths.
TAGS = frozenset({"threshold", "crosses", "change", "anomaly", "all", "any", "webhook", "email", "websocket"})


class RuleList(Page):
    rules: list[Rule]


class RulePatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(description="false: the evaluator skips the rule (its instances go quiet)")


def _rule_field(message: str) -> str | None:
    """The field a whole-rule check complains about (RuleSpec's model validator names it first)."""
    for prefix, field in (("metric ", "metric"), ("scope:", "scope"), ("condition ", "condition")):
        if message.startswith(prefix):
            return field
    return None


def parse_rule_spec(data: Any, at: str = "") -> RuleSpec:
    """A RuleSpec from a request body (``at``: its path in a larger body); 400 naming the field (and, for
    the scope, the position)."""
    if (
        isinstance(data, dict)
        and data.get("channel") in ALERT_CHANNELS
        and isinstance(data.get("scope"), str)
    ):
        try:
            compile_filter(data["scope"], CHANNELS[data["channel"]].fields)
        except FilterError as exc:
            raise ApiError(
                400, "invalid_filter", f"{at}scope: {exc.message}", field=f"{at}scope",
                position=exc.position, expected=exc.expected,
            ) from None  # fmt: skip
    return validated(RuleSpec, data, field_of=_rule_field, tags=TAGS, at=at)


async def _check_targets(request: web.Request, owner: str, spec: RuleSpec) -> None:
    wanted = [(i, c.endpoint) for i, c in enumerate(spec.channels) if isinstance(c, WebhookTarget)]
    known = await existing_endpoint_ids(request.app[ENGINE], owner=owner, endpoint_ids=[e for _, e in wanted])
    for i, endpoint in wanted:
        if endpoint not in known:
            raise ApiError(
                400, "unknown_endpoint",
                f"channels.{i}.endpoint: {endpoint[:80]!r} is not one of your webhook endpoints; "
                "create one with POST /v1/alerts/webhooks and use its id.",
                field=f"channels.{i}.endpoint", endpoint=endpoint[:80],
            )  # fmt: skip


async def _changing(request: web.Request, change: Callable[[Publish], Awaitable[T]]) -> T:
    """Run a repository change with the publisher; 503 when Kafka or PostgreSQL fails (nothing changed)."""
    publisher = request.app[RULE_PUBLISHER]
    sent: list[str] = []

    async def publish(row: AlertRule) -> None:
        await publisher.publish(row)
        sent.append(row.id)

    try:
        return await change(publish)
    except PublishFailed as exc:
        raise ApiError(
            503, "publish_failed",
            f"The rule could not be published to the evaluators ({exc}); nothing was changed. "
            "Try again shortly.",
            headers={"Retry-After": "5"},
        ) from None  # fmt: skip
    except (SQLAlchemyError, OSError) as exc:
        # Published but maybe not committed: the topic must go back to what PostgreSQL holds.
        for rule_id in sent:
            publisher.repair(rule_id)
        raise ApiError(
            503, "database_unavailable",
            f"Rules cannot be stored right now ({type(exc).__name__}); try again.",
            headers={"Retry-After": "5"},
        ) from None  # fmt: skip


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/json", headers=headers
    )


def _rule_json(row: AlertRule) -> dict[str, Any]:
    return alert_rules.rule_of(row).model_dump(mode="json", by_alias=True)


async def create_rule(request: web.Request) -> web.Response:
    principal = caller(request)
    spec = parse_rule_spec(await read_json(request))
    await _check_targets(request, principal.owner, spec)
    limit = principal.limits.alerts_per_month
    try:
        row = await _changing(
            request,
            lambda publish: alert_rules.create_rule(
                request.app[ENGINE],
                owner=principal.owner,
                app_id=request.app[SETTINGS].app_id,
                spec=spec,
                monthly_limit=limit,
                publish=publish,
            ),
        )
    except QuotaExceeded as exc:
        retry_after = max(1, int((exc.resets_at - now()).total_seconds()))
        raise ApiError(
            429, "quota_exceeded",
            f"The {principal.tier} tier allows {exc.limit} alert rules created per calendar month (UTC); "
            f"{exc.used} were created this month, deleted ones included. The quota resets at "
            f"{exc.resets_at.isoformat()}.",
            headers={"Retry-After": str(retry_after)}, limit=exc.limit, used=exc.used,
            resets_at=exc.resets_at.isoformat(), tier=principal.tier,
        ) from None  # fmt: skip
    return _json(_rule_json(row), 201, {"Location": f"/v1/alerts/rules/{row.id}"})


async def list_rules(request: web.Request) -> web.Response:
    principal = caller(request)
    after, limit = page_of(request)
    rows = await alert_rules.list_rules(request.app[ENGINE], owner=principal.owner, after=after, limit=limit)
    cursor = next_cursor(rows, limit, lambda row: (row.created_at, row.id))
    return _json({"rules": [_rule_json(row) for row in rows], "next_cursor": cursor})


def _rule_id(request: web.Request) -> str:
    return request.match_info["rule_id"]


async def get_rule(request: web.Request) -> web.Response:
    principal = caller(request)
    row = await alert_rules.get_rule(request.app[ENGINE], owner=principal.owner, rule_id=_rule_id(request))
    if row is None:
        raise not_found("rule", _rule_id(request))
    return _json(_rule_json(row))


async def replace_rule(request: web.Request) -> web.Response:
    principal = caller(request)
    spec = parse_rule_spec(await read_json(request))
    await _check_targets(request, principal.owner, spec)
    row = await _changing(
        request,
        lambda publish: alert_rules.replace_rule(
            request.app[ENGINE], owner=principal.owner, rule_id=_rule_id(request), spec=spec, publish=publish
        ),
    )
    if row is None:
        raise not_found("rule", _rule_id(request))
    return _json(_rule_json(row))


async def patch_rule(request: web.Request) -> web.Response:
    principal = caller(request)
    data = await read_json(request)
    if isinstance(data, dict) and set(data) - {"enabled"}:
        other = sorted(set(data) - {"enabled"})[0]
        raise ApiError(
            400, "invalid_request",
            f"PATCH changes only 'enabled', not {other[:40]!r}; replace the whole rule with PUT.",
            field=other[:40],
        )  # fmt: skip
    patch = validated(RulePatch, data)
    row = await _changing(
        request,
        lambda publish: alert_rules.set_enabled(
            request.app[ENGINE], owner=principal.owner, rule_id=_rule_id(request), enabled=patch.enabled,
            publish=publish,
        ),
    )  # fmt: skip
    if row is None:
        raise not_found("rule", _rule_id(request))
    return _json(_rule_json(row))


async def delete_rule(request: web.Request) -> web.Response:
    principal = caller(request)
    row = await _changing(
        request,
        lambda publish: alert_rules.delete_rule(
            request.app[ENGINE], owner=principal.owner, rule_id=_rule_id(request), publish=publish
        ),
    )
    if row is None:
        raise not_found("rule", _rule_id(request))
    return web.Response(status=204)


_TAG = "alerts"
_ID = Param("rule_id", "path", "the rule's id (rule_...)")
_INVALID = (
    "invalid_request (names the field, e.g. condition.window or metric), invalid_filter (the scope, with its "
    "position) or unknown_endpoint (a webhook channel that is not one of your endpoints)"
)
_GONE = {404: "rule_not_found: no such rule among yours (deleted, or another owner's)"}
_UNAVAILABLE = {503: "publish_failed or database_unavailable: nothing was changed; retry after Retry-After"}
ROUTES: tuple[Operation, ...] = (
    Operation("POST", "/v1/alerts/rules", "Create an alert rule (published to the evaluators)", _TAG,
              response=Rule, status=201, request=RuleSpec, auth="required", handler=create_rule,
              errors={400: _INVALID, **_UNAVAILABLE},
              description="Over the tier's monthly quota of created rules (deleted ones count) the answer is "
              "429 quota_exceeded with limit, used, resets_at and Retry-After (seconds until the next "
              "calendar month, UTC)."),
    Operation("GET", "/v1/alerts/rules", "The caller's rules, newest first", _TAG, response=RuleList,
              params=PAGE_PARAMS, auth="required", handler=list_rules,
              errors={400: "invalid_request: a bad limit or cursor"}),
    Operation("GET", "/v1/alerts/rules/{rule_id}", "One of the caller's rules", _TAG, response=Rule,
              params=(_ID,), auth="required", handler=get_rule, errors=_GONE),
    Operation("PUT", "/v1/alerts/rules/{rule_id}", "Replace a rule's spec (version + 1)", _TAG, response=Rule,
              request=RuleSpec, params=(_ID,), auth="required", handler=replace_rule,
              errors={400: _INVALID, **_GONE, **_UNAVAILABLE}),
    Operation("PATCH", "/v1/alerts/rules/{rule_id}", "Enable or disable a rule", _TAG, response=Rule,
              request=RulePatch, params=(_ID,), auth="required", handler=patch_rule,
              errors={400: "invalid_request", **_GONE, **_UNAVAILABLE}),
    Operation("DELETE", "/v1/alerts/rules/{rule_id}", "Delete a rule (a tombstone on alerts.rules)", _TAG,
              status=204, params=(_ID,), auth="required", handler=delete_rule,
              errors={**_GONE, **_UNAVAILABLE}),
)  # fmt: skip
