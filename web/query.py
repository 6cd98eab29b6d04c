"""``/v1/query``: filtered, sorted, paged rows and group_by aggregations over live or historical state."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from aiohttp import web
from pydantic import ValidationError

from pipeline.channels import CHANNELS
from pipeline.filters import Filter, FilterError, compile_filter
from pipeline.storage.history import read_history
from web import openapi
from web.aggregate import (
    Aggregation,
    Group,
    SortKey,
    aggregate,
    bucket_start,
    comes_after,
    iso,
    leading,
    order,
)
from web.aggregate import parse_aggregation as _parse_aggregation
from web.errors import ApiError
from web.keys import ENGINE, PRINCIPAL, REDIS, REPLICA, SETTINGS
from web.openapi import Operation, Param
from web.principal import Principal
from web.query_cache import EpochTracker, QueryCache, query_digest
from web.query_model import (
    TIME,
    AggregateGroup,
    AggregateResponse,
    CursorError,
    HistorySpec,
    QueryRequest,
    QueryResponse,
    channel_fields,
    decode_cursor,
    encode_cursor,
    parse_request,
    request_errors,
)

__all__ = [
    "QueryRequest",
    "QueryResponse",
    "AggregateGroup",
    "AggregateResponse",
    "HistorySpec",
    "ROUTES",
    "QUERY",
    "OPEN_BUCKET_TTL_S",
    "run_query",
    "setup",
]

_RESOLUTION_S = {"1h": 3600, "1d": 86400}
# Cache lifetime of a history result whose window reaches the present (its last bucket still moves).
OPEN_BUCKET_TTL_S = 5.0
_GET_PARAMS = ("channel", "filter", "sort", "fields", "limit", "cursor")


@dataclass
class QueryState:
    epochs: EpochTracker
    cache: QueryCache


QUERY = web.AppKey("query", QueryState)


async def post_query(request: web.Request) -> web.Response:
    try:
        data = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "invalid_json", f"the request body is not valid JSON: {exc}") from None
    return await _respond(request, data)


async def get_query(request: web.Request) -> web.Response:
    unknown = sorted(set(request.query) - set(_GET_PARAMS))
    if unknown:
        raise ApiError(
            400, "invalid_request",
            f"unknown query parameter {unknown[0]!r}; GET /v1/query takes {', '.join(_GET_PARAMS)}"
            " (POST a JSON body for group_by, aggregations and history)",
        )  # fmt: skip
    data: dict[str, Any] = {}
    for name in _GET_PARAMS:
        values = request.query.getall(name, [])
        if len(values) > 1:
            raise ApiError(400, "invalid_request", f"query parameter {name!r} is given {len(values)} times")
        if values:
            is_list = name in ("sort", "fields")
            data[name] = [v.strip() for v in values[0].split(",") if v.strip()] if is_list else values[0]
    return await _respond(request, data)


async def _respond(request: web.Request, data: Any) -> web.Response:
    try:
        query = parse_request(data, request.app[SETTINGS].query_max_rows)
    except ValidationError as exc:
        message, errors = request_errors(exc)
        raise ApiError(400, "invalid_request", message, errors=errors) from None
    principal = request.get(PRINCIPAL)
    # Fail closed: a request nobody authenticated is served like the free tier.
    delayed = principal.delayed if isinstance(principal, Principal) else True
    result = await run_query(request.app, query, delayed=delayed)
    return web.Response(body=orjson.dumps(result), content_type="application/json")


async def run_query(app: web.Application, query: QueryRequest, *, delayed: bool) -> dict[str, Any]:
    """The response body of a validated query; ApiError for filters, cursors and too large scans."""
    fields = channel_fields(query.channel, query.history is not None)
    try:
        predicate = compile_filter(query.filter, fields)
    except FilterError as exc:
        raise ApiError(
            400, "invalid_filter", exc.message, position=exc.position, expected=exc.expected
        ) from None
    state, settings = app[QUERY], app[SETTINGS]
    view_tag = "delayed" if delayed else "live"
    ttl_s = settings.query_cache_ttl_s
    if query.history is None:
        view = app[REPLICA].view(query.channel, delayed)

        async def live() -> dict[str, Any]:
            # No await between selecting the rows and the result: the rows cannot change under the scan.
            return _evaluate(query, view.matching_rows(predicate), None, _position(view.position))

        if not query.aggregating:
            # Rows are not cached: pages must follow the replica, and a page costs about what a hit does.
            return await live()
        epoch = state.epochs.epoch(query.channel, delayed, view)
        digest = query_digest({"query": query.model_dump(mode="json", by_alias=True), "epoch": epoch.token})
        key = state.cache.key("live", query.channel, view_tag, epoch.number, digest)
        compute = live
    else:
        start, end = _window(query.history, delayed, settings.free_tier_delay_s)
        shape = {"query": query.model_dump(mode="json", by_alias=True), "from": iso(start), "to": iso(end)}
        key = state.cache.key("history", query.channel, view_tag, query_digest(shape))

        async def compute() -> dict[str, Any]:
            rows = await _history_rows(app, query, start, end)
            return _evaluate(query, rows, predicate, None)

        if end > datetime.now(UTC) - timedelta(seconds=_RESOLUTION_S[query.history.resolution]):
            # The window holds the bucket still being written: cache it only briefly.
            ttl_s = min(ttl_s, OPEN_BUCKET_TTL_S)
    result, cached = await state.cache.get_or_compute(key, compute, ttl_s)
    return result | {"cached": True} if cached else result


def _position(position: dict[int, int]) -> dict[str, int]:
    return {str(partition): offset for partition, offset in sorted(position.items())}


def _window(spec: HistorySpec, delayed: bool, delay_s: float) -> tuple[datetime, datetime]:
    now = datetime.now(UTC)
    start, end = spec.window(now)
    if delayed and delay_s > 0:
        # The free tier sees only buckets that had closed by (now - delay): no bucket is still moving.
        step = _RESOLUTION_S[spec.resolution]
        cutoff = (now - timedelta(seconds=delay_s)).timestamp()
        end = min(end, datetime.fromtimestamp(cutoff // step * step, UTC))
    return start, max(start, end)


async def _history_rows(
    app: web.Application, query: QueryRequest, start: datetime, end: datetime
) -> list[dict[str, Any]]:
    spec = query.history
    assert spec is not None
    if end <= start:
        return []
    most = app[SETTINGS].query_max_rows
    rollups = await read_history(app[ENGINE], query.channel, spec.resolution, start, end, limit=most + 1)
    if len(rollups) > most:
        # The filter runs on the rollups read, so only a narrower range (or coarser resolution) helps.
        raise ApiError(
            400, "query_too_large",
            f"history of channel {query.channel} from {iso(start)} to {iso(end)} holds more than {most}"
            f" {spec.resolution} rollups; narrow 'from'/'to'"
            + (" or use resolution '1d'" if spec.resolution == "1h" else ""),
            limit=most,
        )  # fmt: skip
    protocols = app[REPLICA].protocols
    bucket = spec.bucket or spec.resolution
    rows = []
    for rollup in rollups:
        row = dict(rollup.fields)
        if query.channel == "tvl" and "category" not in row:
            row["category"] = (protocols.get(row.get("protocol") or "") or {}).get("category")
        row["bucket_start"] = iso(rollup.bucket_start)
        row.update(metric=rollup.metric, samples=rollup.samples, open=rollup.open, high=rollup.high)
        row.update(low=rollup.low, close=rollup.close)
        if TIME in query.group_by:
            row[TIME] = bucket_start(rollup.bucket_start, bucket)
        rows.append(row)
    return rows


def _evaluate(
    query: QueryRequest, rows: Iterable[dict[str, Any]], predicate: Filter | None,
    position: dict[str, int] | None,
) -> dict[str, Any]:  # fmt: skip
    if predicate is None:  # every row given matches
        matched = rows if isinstance(rows, list) else list(rows)
    else:
        test = predicate.predicate  # without Filter.__call__'s hop: this runs once per row
        matched = [row for row in rows if test(row)]
    head = {"channel": query.channel}
    tail = {"count": len(matched), "as_of": _newest(matched), "position": position, "cached": False}
    if query.aggregating:
        return head | _groups(query, matched) | tail
    return head | _page(query, matched) | tail


def _newest(rows: list[dict[str, Any]]) -> str | None:
    """The latest ``as_of`` (ISO strings: their order is time order) among those that are strings."""
    stamps = [row.get("as_of") for row in rows]
    try:
        newest = max(stamps, default=None)  # type: ignore[type-var]
    except TypeError:  # a null or a value of another type among them: the slow way
        newest = None
    if newest is None or type(newest) is not str:
        return max((t for t in stamps if isinstance(t, str)), default=None)
    return newest


def _group_value(group: Group, name: str) -> Any:
    return group.key[name] if name in group.key else group.values.get(name)


def _groups(query: QueryRequest, matched: list[dict[str, Any]]) -> dict[str, Any]:
    fields = channel_fields(query.channel, query.history is not None)
    aggregations = [_parse_aggregation(n, e, fields) for n, e in query.aggregations.items()]
    groups = aggregate(matched, query.group_by, aggregations or [Aggregation("count", "count", None)])
    keys = [SortKey.parse(s) for s in query.sort]
    # The group key breaks ties, so equal queries list groups in the same order.
    keys += [SortKey(f) for f in query.group_by if f not in {k.field for k in keys}]
    order(groups, keys, _group_value)
    page = [{"key": g.key, "values": g.values, "rows": g.rows} for g in groups[: query.limit]]
    return {"groups": page, "group_count": len(groups)}


def _page(query: QueryRequest, matched: list[dict[str, Any]]) -> dict[str, Any]:
    keys = [SortKey.parse(s) for s in query.sort]
    identity = CHANNELS[query.channel].identity + (("bucket_start",) if query.history else ())
    # Identity fields make the order total, so a cursor (the last row's values) names one place.
    keys += [SortKey(f) for f in identity if f not in {k.field for k in keys}]
    try:
        after = decode_cursor(query, len(keys))
    except CursorError as exc:
        raise ApiError(400, "invalid_cursor", str(exc)) from None
    candidates = matched
    if after is not None:
        candidates = [r for r in matched if comes_after([r.get(k.field) for k in keys], after, keys)]
    more = len(candidates) > query.limit
    # Only what can make the page is sorted fully: the rows up to the limit-th by the first key, and ties.
    if keys:  # (every channel has identity fields, so there always are)
        candidates = order(leading(candidates, keys[0], query.limit, dict.get), keys, dict.get)
    page = candidates[: query.limit]
    cursor = encode_cursor(query, [page[-1].get(k.field) for k in keys]) if more else None
    if query.fields is not None:
        page = [{f: row.get(f) for f in query.fields} for row in page]
    return {"rows": page, "next_cursor": cursor}


_TAG = "Query"
_ERRORS = {
    400: "invalid_json, invalid_request (names the field), invalid_filter (with position), invalid_cursor,"
    " or query_too_large (a history range holding more than LLAMA_QUERY_MAX_ROWS rollups).",
}
_LIST = {"type": "string", "description": "comma-separated"}
ROUTES: tuple[Operation, ...] = (
    Operation(
        "POST", "/v1/query", "Filter, sort and page rows, or group and aggregate them, live or historical",
        _TAG, response=QueryResponse | AggregateResponse, request=QueryRequest, errors=_ERRORS,
        handler=post_query,
        description="See docs/query.md. The free tier reads the delayed view (LLAMA_FREE_TIER_DELAY_S).",
    ),
    Operation(
        "GET", "/v1/query", "Rows of a channel (filter, sort, fields, limit, cursor); POST for more",
        _TAG, response=QueryResponse, errors=_ERRORS, handler=get_query,
        params=(
            Param("channel", "query", "tvl, prices, yields or chain", {"enum": list(CHANNELS)}),
            Param("filter", "query", "filter expression, e.g. chain == \"Ethereum\"", required=False),
            Param("sort", "query", "fields, '-' prefix for descending, e.g. -tvl_usd,protocol", _LIST, False),
            Param("fields", "query", "fields of each row; default all", _LIST, False),
            Param("limit", "query", "rows per page (default 100)", {"type": "integer", "minimum": 1}, False),
            Param("cursor", "query", "next_cursor of the previous page", required=False),
        ),
    ),
)  # fmt: skip


def setup(app: web.Application) -> None:
    app[QUERY] = QueryState(EpochTracker(), QueryCache(lambda: app.get(REDIS), app[SETTINGS].app_id))
    for op in ROUTES:
        assert op.handler is not None
        app.router.add_route(op.method, op.path, op.handler)
    openapi.setup(app, ROUTES)
