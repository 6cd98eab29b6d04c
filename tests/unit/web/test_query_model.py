"""Validation of /v1/query requests against the channels' fields, error messages, and cursors."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from web.query_model import (
    CursorError,
    QueryRequest,
    channel_fields,
    decode_cursor,
    encode_cursor,
    parse_request,
    request_errors,
)

HISTORY = {"resolution": "1d", "from": "2022-05-01", "to": "2022-06-01T00:00:00Z"}


def rejected(data: dict[str, Any], max_rows: int = 1000) -> tuple[str, list[dict[str, str]]]:
    with pytest.raises(ValidationError) as caught:
        parse_request(data, max_rows)
    return request_errors(caught.value)


def test_minimal_request_and_defaults() -> None:
    query = parse_request({"channel": "tvl"}, 1000)
    assert (query.filter, query.fields, query.sort, query.limit, query.cursor) == (None, None, [], 100, None)
    assert not query.aggregating and query.history is None


def test_full_request() -> None:
    query = parse_request(
        {"channel": "yields", "filter": 'chain == "Ethereum"', "sort": ["-apy", "pool"],
         "fields": ["pool", "apy"], "limit": 1000},
        1000,
    )  # fmt: skip
    assert query.sort == ["-apy", "pool"] and query.fields == ["pool", "apy"] and query.limit == 1000


@pytest.mark.parametrize(
    ("data", "field", "text"),
    [
        ({"channel": "tvl", "where": "x"}, "where", "unknown field 'where'"),
        ({"channel": "volumes"}, "channel", "'volumes'"),
        (
            {"channel": "prices", "sort": ["-tvl_usd"]},
            "sort",
            "unknown sort field 'tvl_usd' for channel prices",
        ),
        ({"channel": "tvl", "sort": ["tvl_usd", "-tvl_usd"]}, "sort", "names 'tvl_usd' more than once"),
        (
            {"channel": "tvl", "fields": ["tvl_usd", "price"]},
            "fields",
            "unknown field 'price' for channel tvl",
        ),
        ({"channel": "tvl", "group_by": ["time"]}, "group_by", "group_by 'time' needs history"),
        ({"channel": "tvl", "group_by": ["nope"]}, "group_by", "unknown group_by field 'nope'"),
        ({"channel": "tvl", "aggregations": {"t": "sum(chain)"}}, "aggregations", "needs a numeric field"),
        ({"channel": "tvl", "aggregations": {"a b": "count()"}}, "aggregations", "must be an identifier"),
        (
            {"channel": "tvl", "group_by": ["chain"], "aggregations": {"chain": "count()"}},
            "aggregations",
            "'chain' is also a group_by field",
        ),
        ({"channel": "tvl", "group_by": ["chain"], "fields": ["chain"]}, "fields", "cannot be chosen"),
        ({"channel": "tvl", "aggregations": {"n": "count()"}, "cursor": "abc"}, "cursor", "for rows"),
        (
            {"channel": "tvl", "group_by": ["chain"], "sort": ["tvl_usd"]},
            "sort",
            "unknown sort field 'tvl_usd'",
        ),
        ({"channel": "tvl", "limit": 1001}, "limit", "limit 1001 is more than the 1000 rows"),
        ({"channel": "tvl", "limit": 0}, "limit", "(got '0')"),
        ({"channel": "tvl", "limit": "many"}, "limit", "(got 'many')"),
        ({"channel": "chain", "history": HISTORY}, "history", "channel chain keeps no history"),
        ({"channel": "tvl", "history": HISTORY | {"to": "2022-04-01"}}, "history.to", "must be after 'from'"),
        (
            {"channel": "tvl", "history": HISTORY | {"bucket": "1h"}},
            "history.bucket",
            "finer than resolution",
        ),
        ({"channel": "tvl", "history": HISTORY | {"resolution": "1m"}}, "history.resolution", "'1m'"),
        ({"channel": "tvl", "history": HISTORY | {"start": "2022-05-01"}}, "history.start", "unknown field"),
        ({"channel": "tvl", "sort": ["close"]}, "sort", "unknown sort field 'close'"),
        (
            {"channel": "tvl", "history": HISTORY | {"from": "0001-01-01T00:00:00+01:00"}},
            "history.from",
            "out of range",
        ),
    ],
)
def test_errors_name_the_field_and_value(data: dict[str, Any], field: str, text: str) -> None:
    message, errors = rejected(data)
    assert field in [e["field"] for e in errors]
    assert text in message, message
    assert message.startswith(f"{errors[0]['field']}: ")


def test_history_fields_and_time_group() -> None:
    query = parse_request(
        {"channel": "tvl", "history": HISTORY | {"bucket": "7d"}, "group_by": ["time", "chain"],
         "aggregations": {"tvl": "avg(close)", "n": "count()"}, "sort": ["time", "-tvl"]},
        1000,
    )  # fmt: skip
    assert query.history is not None and query.history.bucket == "7d"
    # Naive times are UTC; from/to are the JSON names.
    assert query.history.start == datetime(2022, 5, 1, tzinfo=UTC)
    assert query.history.model_dump(by_alias=True)["to"] == datetime(2022, 6, 1, tzinfo=UTC)
    assert "close" in channel_fields("tvl", True) and "close" not in channel_fields("tvl", False)


def test_history_window_defaults_to_the_end_of_the_current_bucket() -> None:
    query = parse_request({"channel": "prices", "history": {"resolution": "1h", "from": "2024-01-01"}}, 10)
    assert query.history is not None
    now = datetime(2024, 1, 2, 10, 59, 59, tzinfo=UTC)
    assert query.history.window(now) == (
        datetime(2024, 1, 1, tzinfo=UTC),
        datetime(2024, 1, 2, 11, tzinfo=UTC),
    )


def test_json_schema_uses_from_and_to() -> None:
    schema = QueryRequest.model_json_schema()
    history = schema["$defs"]["HistorySpec"]["properties"]
    assert {"from", "to", "resolution", "bucket"} == set(history)
    assert schema["additionalProperties"] is False


# --- cursors -------------------------------------------------------------------------------------------


def test_cursor_round_trip_survives_limit_and_fields_changes() -> None:
    query = parse_request({"channel": "tvl", "sort": ["-tvl_usd"], "filter": "tvl_usd > 0"}, 100)
    values = [1.5e9, "chain", None, "Ethereum"]
    cursor = encode_cursor(query, values)
    assert cursor.isascii() and "=" not in cursor
    again = parse_request(
        {"channel": "tvl", "sort": ["-tvl_usd"], "filter": "tvl_usd > 0", "cursor": cursor, "limit": 7,
         "fields": ["chain"]},
        100,
    )  # fmt: skip
    assert decode_cursor(again, 4) == values


def test_no_cursor_is_none() -> None:
    assert decode_cursor(parse_request({"channel": "tvl"}, 10), 3) is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sort": ["tvl_usd"]}, "belongs to a different query"),
        ({"filter": "tvl_usd > 1"}, "belongs to a different query"),
        ({"channel": "yields"}, "belongs to a different query"),
    ],
)
def test_cursor_of_another_query_is_refused(change: dict[str, Any], message: str) -> None:
    base = {"channel": "tvl", "sort": ["-tvl_usd"], "filter": "tvl_usd > 0"}
    cursor = encode_cursor(parse_request(base, 100), [1.0, "a", "b", "c"])
    other = parse_request(base | change | {"cursor": cursor}, 100)
    with pytest.raises(CursorError, match=message):
        decode_cursor(other, 4)


@pytest.mark.parametrize("cursor", ["not a cursor!", "e30", "eyJxIjoxfQ", "%%%%"])
def test_garbage_cursor_is_refused_naming_it(cursor: str) -> None:
    query = parse_request({"channel": "tvl", "cursor": cursor}, 10)
    with pytest.raises(CursorError, match="is not a cursor this API issued"):
        decode_cursor(query, 3)


def test_cursor_of_other_width_is_refused() -> None:
    query = parse_request({"channel": "tvl"}, 10)
    cursor = encode_cursor(query, ["a", "b"])
    with pytest.raises(CursorError):
        decode_cursor(parse_request({"channel": "tvl", "cursor": cursor}, 10), 3)
