"""``/v1/alerts/silences``: mute the caller's notifications whose labels match every matcher, for a while."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from pipeline.alerting.outbox import reschedule_owner_groups
from pipeline.alerting.silencing import (
    MAX_MATCHERS,
    MAX_REGEX_LENGTH,
    MAX_VALUE_LENGTH,
    MatcherError,
    compile_regex,
    parse_matchers,
)
from pipeline.storage import silences
from pipeline.storage.models import Silence
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
from web.keys import ENGINE
from web.openapi import Operation, Param

__all__ = ["Matcher", "SilenceSpec", "SilenceOut", "SilenceList", "MAX_REGEX_LENGTH", "MAX_SILENCE", "ROUTES"]

MAX_SILENCE = timedelta(days=366)


class Matcher(BaseModel):
    """Alertmanager's matchers: ``=`` and ``!=`` compare the label's value; ``=~`` and ``!~`` match a
    regular expression against the whole value (anchored at both ends). A missing label's value is ""."""

    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, Field(pattern=r"^[a-zA-Z_][a-zA-Z0-9_]{0,63}$", description="a label name")]
    op: Literal["=", "!=", "=~", "!~"] = "="
    value: Annotated[str, Field(max_length=MAX_VALUE_LENGTH)]

    @field_validator("value")
    @classmethod
    def _compiles(cls, value: str, info: ValidationInfo) -> str:
        # RE2 (pipeline/alerting/silencing.py): linear-time matching, so no pattern can stall the notifier.
        if info.data.get("op") in ("=~", "!~"):
            try:
                compile_regex(value)
            except MatcherError as err:
                raise ValueError(str(err)) from None
        return value


class SilenceSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    matchers: Annotated[list[Matcher], Field(min_length=1, max_length=MAX_MATCHERS)]
    starts_at: datetime | None = Field(None, description="default: now; naive times are UTC")
    ends_at: datetime = Field(
        description=f"after starts_at and now, at most {MAX_SILENCE.days} days after starts_at"
    )
    comment: Annotated[str, Field(max_length=500)] = ""

    @field_validator("starts_at", "ends_at")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    @model_validator(mode="after")
    def _window(self) -> SilenceSpec:
        now = datetime.now(UTC)
        starts = self.starts_at or now
        if self.ends_at <= now:
            raise ValueError(
                f"ends_at {self.ends_at.isoformat()} is in the past: the silence would never hold"
            )
        if self.ends_at <= starts:
            raise ValueError(
                f"ends_at {self.ends_at.isoformat()} must be after starts_at {starts.isoformat()}"
            )
        if self.ends_at - starts > MAX_SILENCE:
            raise ValueError(f"a silence may last at most {MAX_SILENCE.days} days; delete and renew it after")
        return self


class SilenceOut(BaseModel):
    id: str
    matchers: list[Matcher]
    starts_at: str
    ends_at: str
    comment: str
    created_at: str
    state: silences.SilenceState


class SilenceList(Page):
    silences: list[SilenceOut]


def _silence_json(row: Silence) -> dict[str, Any]:
    return {
        "id": row.id,
        "matchers": row.matchers,
        "starts_at": iso(row.starts_at),
        "ends_at": iso(row.ends_at),
        "comment": row.comment,
        "created_at": iso(row.created_at),
        "state": silences.state_of(row, now()),
    }


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def _field_of(message: str) -> str | None:
    return "ends_at" if message.startswith(("ends_at", "a silence")) else None


async def create_silence(request: web.Request) -> web.Response:
    principal = caller(request)
    spec = validated(SilenceSpec, await read_json(request), field_of=_field_of)
    matchers = [m.model_dump() for m in spec.matchers]
    try:
        parse_matchers(matchers)  # what the notifier will read back: it must accept every silence stored
    except MatcherError as exc:
        raise ApiError(400, "invalid_request", f"matchers: {exc}.", field="matchers") from None
    row = await silences.create_silence(
        request.app[ENGINE],
        owner=principal.owner,
        matchers=matchers,
        starts_at=spec.starts_at or now(),
        ends_at=spec.ends_at,
        comment=spec.comment,
    )
    return _json(_silence_json(row), 201)


async def list_silences(request: web.Request) -> web.Response:
    principal = caller(request)
    after, limit = page_of(request)
    state = request.query.get("state")
    if state not in (None, "pending", "active", "expired"):
        raise ApiError(
            400, "invalid_request",
            f"Query parameter 'state' must be pending, active or expired, not {state[:20]!r}.",
            field="state",
        )  # fmt: skip
    rows = await silences.list_silences(
        request.app[ENGINE],
        owner=principal.owner,
        after=after,
        limit=limit,
        state=state,  # type: ignore[arg-type]
    )
    cursor = next_cursor(rows, limit, lambda row: (row.created_at, row.id))
    return _json({"silences": [_silence_json(row) for row in rows], "next_cursor": cursor})


async def get_silence(request: web.Request) -> web.Response:
    principal = caller(request)
    silence_id = request.match_info["silence_id"]
    row = await silences.get_silence(request.app[ENGINE], owner=principal.owner, silence_id=silence_id)
    if row is None:
        raise not_found("silence", silence_id)
    return _json(_silence_json(row))


async def expire_silence(request: web.Request) -> web.Response:
    principal = caller(request)
    silence_id = request.match_info["silence_id"]
    row = await silences.expire_silence(request.app[ENGINE], owner=principal.owner, silence_id=silence_id)
    if row is None:
        raise not_found("silence", silence_id)
    # Alerts the silence held back go out now rather than when it would have ended.
    await reschedule_owner_groups(request.app[ENGINE], principal.owner, now())
    return _json(_silence_json(row))


_TAG = "alerts"
_ID = Param("silence_id", "path", "the silence's id (sil_...)")
_STATE = Param(
    "state", "query", "only silences in this state now: pending, active or expired", required=False
)
_GONE = {404: "silence_not_found: no such silence among yours"}
ROUTES: tuple[Operation, ...] = (
    Operation("POST", "/v1/alerts/silences", "Silence matching notifications until ends_at", _TAG,
              response=SilenceOut, status=201, request=SilenceSpec, auth="required", handler=create_silence,
              errors={400: "invalid_request (names the field: a matcher's regex, ends_at...)"}),
    Operation("GET", "/v1/alerts/silences", "The caller's silences, newest first", _TAG, response=SilenceList,
              params=(*PAGE_PARAMS, _STATE), auth="required", handler=list_silences,
              errors={400: "invalid_request: a bad limit, cursor or state"}),
    Operation("GET", "/v1/alerts/silences/{silence_id}", "One of the caller's silences", _TAG,
              response=SilenceOut, params=(_ID,), auth="required", handler=get_silence, errors=_GONE),
    Operation("DELETE", "/v1/alerts/silences/{silence_id}", "Expire a silence now", _TAG, response=SilenceOut,
              params=(_ID,), auth="required", handler=expire_silence, errors=_GONE),
)  # fmt: skip
