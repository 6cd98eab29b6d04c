"""``POST /v1/alerts/backtest``: run a rule over the stored hourly or daily history of the series its scope
matches, with the evaluator's own state machine (pipeline/alerting/backtest.py), and say when it would have
fired and resolved."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline.alerting.backtest import backtest as run_backtest
from pipeline.alerting.rules import Rule
from pipeline.channels import CHANNELS
from pipeline.filters import compile_filter
from pipeline.storage import alert_reads
from pipeline.storage.alert_rules import get_rule, rule_of
from pipeline.storage.history import as_of_of, read_history
from web.alert_http import caller, not_found, read_json, validated
from web.alert_rules_routes import parse_rule_spec
from web.errors import ApiError
from web.keys import ENGINE, REPLICA
from web.openapi import Operation

__all__ = ["BacktestRequest", "BacktestSummary", "BacktestResponse", "MAX_SERIES", "MAX_ROWS", "ROUTES"]

# Bounds of one back-test: it runs in the sidecar, beside live traffic.
MAX_SERIES = 1000
MAX_ROWS = 100_000
MAX_TRANSITIONS = 2000
# Series scanned to match the scope (each with its newest row); far above any channel's count today.
MAX_SCANNED = 200_000


class BacktestRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    rule: dict[str, Any] | None = Field(None, description="a RuleSpec to try (it need not be saved)")
    rule_id: str | None = Field(None, description="or one of your saved rules")
    start: datetime = Field(alias="from", description="first bucket start (inclusive); naive means UTC")
    end: datetime = Field(alias="to", description="buckets starting before this (exclusive)")
    resolution: Literal["1h", "1d"] = Field("1d", description="which stored rollups to replay")

    @field_validator("start", "end")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    @model_validator(mode="after")
    def _one_rule(self) -> BacktestRequest:
        if (self.rule is None) == (self.rule_id is None):
            raise ValueError("give exactly one of 'rule' (a rule spec) and 'rule_id' (a saved rule)")
        if self.end <= self.start:
            raise ValueError(f"'to' ({self.end.isoformat()}) must be after 'from' ({self.start.isoformat()})")
        return self


class BacktestSummary(BaseModel):
    fired: int = Field(description="how many times an instance would have started firing")
    resolved: int
    fired_at: list[dict[str, str]] = Field(description="[{series_key, at}] of every start of firing")
    resolved_at: list[dict[str, str]]
    text: str


class BacktestResponse(BaseModel):
    rule: Rule
    start: str = Field(alias="from")
    end: str = Field(alias="to")
    resolution: str
    series: int = Field(description="series the scope matched")
    rows: int = Field(description="history rows replayed")
    transitions: list[dict[str, Any]] = Field(description="AlertTransition objects, in event-time order")
    truncated: bool = Field(description=f"more than {MAX_TRANSITIONS} transitions: the first ones are shown")
    summary: BacktestSummary


def _request_field(message: str) -> str | None:
    return "to" if message.startswith("'to'") else "rule" if message.startswith("give exactly one") else None


async def _rule(request: web.Request, body: BacktestRequest, owner: str) -> Rule:
    """The rule to replay, enabled: trying a rule before enabling it is what a back-test is for."""
    if body.rule_id is not None:
        row = await get_rule(request.app[ENGINE], owner=owner, rule_id=body.rule_id)
        if row is None:
            raise not_found("rule", body.rule_id)
        return rule_of(row).model_copy(update={"enabled": True})
    spec = parse_rule_spec(body.rule, at="rule.")
    moment = datetime.now(UTC)
    return Rule.model_validate(
        {**spec.model_dump(by_alias=True), "enabled": True, "id": "backtest", "owner": owner,
         "created_at": moment, "updated_at": moment}
    )  # fmt: skip


def _too_wide(what: str, limit: int, found: int) -> ApiError:
    return ApiError(
        400, "backtest_too_wide",
        f"The back-test would replay {found} {what}, more than {limit}: "
        "narrow the rule's scope or the time range.",
        limit=limit, found=found,
    )  # fmt: skip


async def _history(
    request: web.Request, rule: Rule, body: BacktestRequest
) -> tuple[int, list[tuple[str, dict[str, Any]]]]:
    """(series matched, their rows in event-time order), bounded by MAX_SERIES and MAX_ROWS."""
    engine, channel = request.app[ENGINE], rule.channel
    scope = compile_filter(rule.scope or None, CHANNELS[channel].fields)
    replica = request.app.get(REPLICA)

    def row_of(fields: dict[str, Any]) -> dict[str, Any]:
        # TVL rows are stored as the topic has them; the sidecar joins the protocol's category, as live rows.
        if channel == "tvl" and replica is not None:
            replica.enrich(fields)
        return fields

    newest = await alert_reads.newest_series_rows(
        engine, channel, body.resolution, body.start, body.end, limit=MAX_SCANNED
    )
    keys = [key for key, fields in newest if scope(row_of(fields))]
    if len(keys) > MAX_SERIES:
        raise _too_wide("series", MAX_SERIES, len(keys))
    count = await alert_reads.count_history_rows(engine, channel, body.resolution, body.start, body.end, keys)
    if count > MAX_ROWS:
        raise _too_wide("rows", MAX_ROWS, count)
    rollups = await read_history(
        engine, channel, body.resolution, body.start, body.end, limit=MAX_ROWS, series_keys=keys
    )
    rows = [(r.series_key, row_of(r.fields)) for r in rollups]
    rows.sort(key=lambda item: (as_of_of(item[1]), item[0]))
    return len(keys), rows


def _summary(transitions: list[dict[str, Any]], series: int) -> dict[str, Any]:
    def at(t: dict[str, Any]) -> dict[str, str]:
        return {"series_key": str(t["series_key"]), "at": str(t.get("starts_at") or t["as_of"])}

    fired = [at(t) for t in transitions if t["state"] == "firing" and t.get("previous_state") != "firing"]
    resolved = [
        {"series_key": str(t["series_key"]), "at": str(t.get("ends_at") or t["as_of"])}
        for t in transitions
        if t["state"] == "resolved"
    ]
    when = ", ".join(f["at"] for f in fired[:10]) + (" …" if len(fired) > 10 else "")
    text = f"would have fired {len(fired)} time{'s' if len(fired) != 1 else ''} across {series} series" + (
        f": {when}" if fired else ""
    )
    return {
        "fired": len(fired),
        "resolved": len(resolved),
        "fired_at": fired,
        "resolved_at": resolved,
        "text": text,
    }


async def backtest(request: web.Request) -> web.Response:
    principal = caller(request)
    body = validated(BacktestRequest, await read_json(request), field_of=_request_field)
    rule = await _rule(request, body, principal.owner)
    series, rows = await _history(request, rule, body)
    # A thread, so a long replay does not stall the sidecar's event loop.
    transitions: list[dict[str, Any]] = [dict(t) for t in await asyncio.to_thread(run_backtest, rule, rows)]
    response = {
        "rule": rule.model_dump(mode="json", by_alias=True),
        "from": body.start.isoformat(),
        "to": body.end.isoformat(),
        "resolution": body.resolution,
        "series": series,
        "rows": len(rows),
        "transitions": transitions[:MAX_TRANSITIONS],
        "truncated": len(transitions) > MAX_TRANSITIONS,
        "summary": _summary(transitions, series),
    }
    return web.Response(body=orjson.dumps(response), content_type="application/json")


ROUTES: tuple[Operation, ...] = (
    Operation("POST", "/v1/alerts/backtest", "When a rule would have fired and resolved over stored history",
              "alerts", response=BacktestResponse, request=BacktestRequest, auth="required", handler=backtest,
              errors={400: "invalid_request or invalid_filter (names the field), or backtest_too_wide "
                      f"(more than {MAX_SERIES} series or {MAX_ROWS} rows)",
                      404: "rule_not_found: rule_id is not one of your rules"}),
)  # fmt: skip
