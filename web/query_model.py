"""Request and response models of ``/v1/query``, their validation against channel fields, and cursors."""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from pipeline.channels import CHANNELS, FieldType
from web.aggregate import BUCKETS, AggregationError, SortKey, parse_aggregation
from web.query_cache import query_digest

__all__ = [
    "HISTORY_FIELDS",
    "TIME",
    "HistorySpec",
    "QueryRequest",
    "QueryResponse",
    "AggregateGroup",
    "AggregateResponse",
    "channel_fields",
    "parse_request",
    "request_errors",
    "encode_cursor",
    "decode_cursor",
    "CursorError",
]

# Rollup columns every history row carries beside the channel's own fields.
HISTORY_FIELDS: dict[str, FieldType] = {
    "bucket_start": "time", "metric": "string", "open": "number", "high": "number", "low": "number",
    "close": "number", "samples": "int",
}  # fmt: skip
# Pseudo-field of group_by with history: the start of the row's time bucket.
TIME = "time"
_RESOLUTION_S = {"1h": 3600, "1d": 86400}


def channel_fields(channel: str, history: bool) -> dict[str, FieldType]:
    fields = dict(CHANNELS[channel].fields)
    return fields | HISTORY_FIELDS if history else fields


def _known(name: str, known: dict[str, FieldType] | list[str], what: str, channel: str) -> str:
    if name not in known:
        raise ValueError(f"unknown {what} {name!r} for channel {channel}; use one of {', '.join(known)}")
    return name


def _unique(names: list[str], what: str) -> list[str]:
    seen = [n.removeprefix("-").removeprefix("+") for n in names]
    twice = sorted({n for n in seen if seen.count(n) > 1})
    if twice:
        raise ValueError(f"{what} names {twice[0]!r} more than once")
    return names


class HistorySpec(BaseModel):
    """Read hourly or daily rollups from the SQL store instead of the live replica."""

    model_config = ConfigDict(extra="forbid")

    resolution: Literal["1h", "1d"] = Field(description="which rollups to read")
    start: datetime = Field(alias="from", description="first bucket start (inclusive); naive means UTC")
    end: datetime | None = Field(
        None, alias="to", description="buckets starting before this (exclusive); default: up to now"
    )
    bucket: Literal["1h", "1d", "7d", "30d"] | None = Field(
        None, description="time bucket of the 'time' group_by field, UTC-epoch aligned; default resolution"
    )

    @field_validator("start", "end")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        try:
            return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        except OverflowError:
            raise ValueError(f"{value.isoformat()} is out of range in UTC") from None

    @field_validator("end")
    @classmethod
    def _after_start(cls, value: datetime | None, info: ValidationInfo) -> datetime | None:
        start = info.data.get("start")
        if value is not None and start is not None and value <= start:
            raise ValueError(f"'to' ({value.isoformat()}) must be after 'from' ({start.isoformat()})")
        return value

    @field_validator("bucket")
    @classmethod
    def _coarse_enough(cls, value: str | None, info: ValidationInfo) -> str | None:
        resolution = info.data.get("resolution")
        if value is not None and resolution is not None and BUCKETS[value] < _RESOLUTION_S[resolution]:
            raise ValueError(f"bucket {value!r} is finer than resolution {resolution!r}; use {resolution!r}")
        return value

    def window(self, now: datetime) -> tuple[datetime, datetime]:
        """[from, to) to read; no 'to' means through the current bucket, a stable bound for caching."""
        step = _RESOLUTION_S[self.resolution]
        end = self.end or datetime.fromtimestamp((now.timestamp() // step + 1) * step, UTC)
        return self.start, end


class QueryRequest(BaseModel):
    """Body of POST /v1/query. Fields are validated in this order, each against the ones before it."""

    model_config = ConfigDict(extra="forbid")

    channel: Literal["tvl", "prices", "yields", "chain"]
    history: HistorySpec | None = Field(None, description="read rollups from SQL instead of live state")
    filter: str | None = Field(None, description='filter language expression, e.g. chain == "Ethereum"')
    group_by: list[str] = Field(default_factory=list, max_length=8, description="fields to group on")
    aggregations: dict[str, str] = Field(
        default_factory=dict, max_length=32, description="name -> count() | sum(f) | p90(f) | percentile(f,q)"
    )
    sort: list[str] = Field(default_factory=list, max_length=8, description="fields, '-' for descending")
    fields: list[str] | None = Field(None, max_length=64, description="fields of each row; default all")
    limit: int = Field(100, ge=1, description="rows (or groups) per response, at most LLAMA_QUERY_MAX_ROWS")
    cursor: str | None = Field(None, max_length=4096, description="next_cursor of the previous page")

    @field_validator("history")
    @classmethod
    def _has_history(cls, value: HistorySpec | None, info: ValidationInfo) -> HistorySpec | None:
        if value is not None and info.data.get("channel") == "chain":
            raise ValueError("channel chain keeps no history (events are kept 7 days in Kafka only)")
        return value

    @field_validator("group_by")
    @classmethod
    def _group_fields(cls, value: list[str], info: ValidationInfo) -> list[str]:
        if (channel := info.data.get("channel")) is not None:
            history = info.data.get("history") is not None
            known = channel_fields(channel, history) | ({TIME: "time"} if history else {})
            for name in value:
                if name == TIME and not history:
                    raise ValueError("group_by 'time' needs history (the bucket is of rollup times)")
                _known(name, known, "group_by field", channel)
        return _unique(value, "group_by")

    @field_validator("aggregations")
    @classmethod
    def _aggregations(cls, value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        if (channel := info.data.get("channel")) is not None:
            fields = channel_fields(channel, info.data.get("history") is not None)
            for name, expression in value.items():
                if not name.isidentifier() or len(name) > 64:
                    raise ValueError(f"aggregation name {name[:64]!r} must be an identifier like total_tvl")
                if name in info.data.get("group_by", []):
                    # Sort names a group_by field or an aggregation: one name must not be both.
                    raise ValueError(f"aggregation name {name!r} is also a group_by field; rename it")
                try:
                    parse_aggregation(name, expression, fields)
                except AggregationError as exc:
                    raise ValueError(str(exc)) from None
        return value

    @field_validator("sort")
    @classmethod
    def _sort(cls, value: list[str], info: ValidationInfo) -> list[str]:
        if (channel := info.data.get("channel")) is not None:
            group_by, aggregations = info.data.get("group_by", []), info.data.get("aggregations", {})
            known: dict[str, FieldType] | list[str] = (
                [*group_by, *aggregations]
                if group_by or aggregations
                else channel_fields(channel, info.data.get("history") is not None)
            )
            for item in value:
                _known(SortKey.parse(item).field, known, "sort field", channel)
        return _unique(value, "sort")

    @field_validator("fields")
    @classmethod
    def _fields(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if value is None or (channel := info.data.get("channel")) is None:
            return value
        if info.data.get("group_by") or info.data.get("aggregations"):
            raise ValueError("fields cannot be chosen with group_by or aggregations (groups have key/values)")
        for name in value:
            _known(name, channel_fields(channel, info.data.get("history") is not None), "field", channel)
        return _unique(value, "fields")

    @field_validator("limit")
    @classmethod
    def _limit(cls, value: int, info: ValidationInfo) -> int:
        most = (info.context or {}).get("max_rows")
        if most is not None and value > most:
            raise ValueError(f"limit {value} is more than the {most} rows a query may return")
        return value

    @field_validator("cursor")
    @classmethod
    def _cursor(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and (info.data.get("group_by") or info.data.get("aggregations")):
            raise ValueError("aggregations return one page of groups (raise limit); cursor is for rows")
        return value

    @property
    def aggregating(self) -> bool:
        return bool(self.group_by or self.aggregations)

    def shape(self) -> dict[str, Any]:
        """What a cursor belongs to: the query without its page (cursor, limit) and projection."""
        return self.model_dump(mode="json", by_alias=True, exclude={"cursor", "limit", "fields"})


class QueryResponse(BaseModel):
    """Rows of a query: one page, sorted, with the cursor of the next page."""

    channel: str
    rows: list[dict[str, Any]]
    next_cursor: str | None = Field(description="pass as cursor for the next page; null on the last page")
    count: int = Field(description="rows the filter matched, over all pages")
    as_of: str | None = Field(description="newest event time (as_of) among the matched rows")
    position: dict[str, int] | None = Field(description="replica position (partition -> next offset)")
    cached: bool


class AggregateGroup(BaseModel):
    key: dict[str, Any] = Field(description="group_by field -> value ('time': bucket start)")
    values: dict[str, float | int | None] = Field(description="aggregation name -> value; null: no values")
    rows: int = Field(description="rows in the group")


class AggregateResponse(BaseModel):
    """Groups of a query with group_by and/or aggregations, at most ``limit`` of them."""

    channel: str
    groups: list[AggregateGroup]
    count: int = Field(description="rows the filter matched (aggregated)")
    group_count: int = Field(description="groups before limit: more than len(groups) when truncated")
    as_of: str | None
    position: dict[str, int] | None
    cached: bool = Field(description="served from the Redis query cache")


def request_errors(exc: ValidationError) -> tuple[str, list[dict[str, str]]]:
    """A one-sentence message naming the offending field(s) and value, and the errors one by one."""
    errors = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(part) for part in error["loc"]) or "body"
        if error["type"] == "extra_forbidden":
            message = f"unknown field {where!r}"
        else:
            message = error["msg"].removeprefix("Value error, ")
            if error["type"] != "value_error":
                message += f" (got {str(error.get('input'))[:80]!r})"
        errors.append({"field": where, "message": message})
    return "; ".join(f"{e['field']}: {e['message']}" for e in errors[:3]), errors


def parse_request(data: Any, max_rows: int) -> QueryRequest:
    """Validate a decoded body; raises ValidationError (see ``request_errors``)."""
    return QueryRequest.model_validate(data, context={"max_rows": max_rows})


class CursorError(ValueError):
    """A cursor that is not one this API issued for this query."""


def _digest(shape: dict[str, Any]) -> str:
    return query_digest(shape)[:16]


def encode_cursor(request: QueryRequest, values: list[Any]) -> str:
    raw = orjson.dumps({"q": _digest(request.shape()), "v": values})
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(request: QueryRequest, width: int) -> list[Any] | None:
    """The sort values of the last row of the previous page, or None without a cursor."""
    if request.cursor is None:
        return None
    try:
        text = request.cursor + "=" * (-len(request.cursor) % 4)
        data = orjson.loads(base64.urlsafe_b64decode(text.encode()))
    except (ValueError, binascii.Error):
        raise CursorError(f"cursor {request.cursor[:40]!r} is not a cursor this API issued") from None
    if not isinstance(data, dict) or not isinstance(data.get("v"), list) or len(data["v"]) != width:
        raise CursorError(f"cursor {request.cursor[:40]!r} is not a cursor this API issued")
    if data.get("q") != _digest(request.shape()):
        raise CursorError("the cursor belongs to a different query; send the same channel, filter and sort")
    return list(data["v"])
