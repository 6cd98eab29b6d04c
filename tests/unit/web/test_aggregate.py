"""Aggregations, percentiles, time buckets and ordering of the query API (pure functions)."""

from __future__ import annotations

import csv
import math
import random
import statistics
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from pipeline.channels import CHANNELS, FieldType
from web.aggregate import (
    Aggregation,
    AggregationError,
    SortKey,
    aggregate,
    bucket_start,
    comes_after,
    leading,
    order,
    parse_aggregation,
    percentile,
)

TVL: dict[str, FieldType] = CHANNELS["tvl"].fields


def chain_tvls(data_dir: Path, day: str) -> list[float]:
    """Every chain's TVL on one day of the real DeFiLlama export."""
    with open(data_dir / "defillama" / "chain_tvl_daily_2018-2023.csv", newline="") as f:
        for record in csv.DictReader(f):
            if record["date"].startswith(day):
                return [float(v) for k, v in record.items() if k != "date" and v]
    raise AssertionError(f"no row for {day}")


# --- parsing -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("count()", Aggregation("a", "count", None)),
        ("count(protocol)", Aggregation("a", "count", "protocol")),
        ("sum(tvl_usd)", Aggregation("a", "sum", "tvl_usd")),
        (" AVG ( change_1d_pct ) ", Aggregation("a", "avg", "change_1d_pct")),
        ("min(tvl_usd)", Aggregation("a", "min", "tvl_usd")),
        ("max(tvl_usd)", Aggregation("a", "max", "tvl_usd")),
        ("p50(tvl_usd)", Aggregation("a", "percentile", "tvl_usd", 0.5)),
        ("p99(tvl_usd)", Aggregation("a", "percentile", "tvl_usd", 0.99)),
        ("percentile(tvl_usd, 0.9)", Aggregation("a", "percentile", "tvl_usd", 0.9)),
        ("percentile(tvl_usd,1)", Aggregation("a", "percentile", "tvl_usd", 1.0)),
    ],
)
def test_parse_aggregation(expression: str, expected: Aggregation) -> None:
    assert parse_aggregation("a", expression, TVL) == expected


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("median(tvl_usd)", "unknown function 'median'"),
        ("sum(tvl)", "unknown field 'tvl'"),
        ("sum(chain)", "needs a numeric field, but 'chain' is string"),
        ("avg(stale)", "needs a numeric field, but 'stale' is bool"),
        ("max(as_of)", "needs a numeric field, but 'as_of' is time"),
        ("sum()", "sum() needs a field"),
        ("sum(tvl_usd, 2)", "takes one field"),
        ("percentile(tvl_usd, 1.5)", "q between 0 and 1, got '1.5'"),
        ("percentile(tvl_usd, nan)", "q between 0 and 1, got 'nan'"),
        ("percentile(tvl_usd)", "q between 0 and 1, got None"),
        ("tvl_usd", "cannot parse 'tvl_usd'"),
        ("sum(tvl_usd) + 1", "cannot parse"),
    ],
)
def test_parse_aggregation_errors_name_the_offending_part(expression: str, message: str) -> None:
    with pytest.raises(AggregationError) as caught:
        parse_aggregation("total", expression, TVL)
    assert "aggregation 'total'" in str(caught.value)
    assert message in str(caught.value)


# --- percentiles ---------------------------------------------------------------------------------------


def test_percentile_is_linear_interpolation_like_statistics_inclusive(data_dir: Path) -> None:
    values = sorted(chain_tvls(data_dir, "2022-05-09"))
    assert len(values) > 50
    expected = statistics.quantiles(values, n=100, method="inclusive")
    for k in range(1, 100):
        assert percentile(values, k / 100) == pytest.approx(expected[k - 1], rel=1e-12)


def test_percentile_edges() -> None:
    assert percentile([], 0.5) is None
    assert percentile([7.0], 0.99) == 7.0
    assert percentile([1.0, 2.0, 10.0], 0.0) == 1.0
    assert percentile([1.0, 2.0, 10.0], 1.0) == 10.0
    # rank (3 - 1) * 0.75 = 1.5: halfway between 2 and 10.
    assert percentile([1.0, 2.0, 10.0], 0.75) == 6.0


# --- aggregate -----------------------------------------------------------------------------------------

ROWS: list[dict[str, Any]] = [
    {"chain": "Ethereum", "kind": "protocol", "tvl_usd": 10.0, "change_1d_pct": 1.0},
    {"chain": "Ethereum", "kind": "protocol", "tvl_usd": 30.0, "change_1d_pct": None},
    {"chain": "Ethereum", "kind": "chain", "tvl_usd": 100.0, "change_1d_pct": -2.0},
    {"chain": "Arbitrum", "kind": "protocol", "tvl_usd": 5.0, "change_1d_pct": True},  # bad data: not 1
    {"chain": None, "kind": "protocol", "tvl_usd": 7.0},
]


def aggs(**expressions: str) -> list[Aggregation]:
    return [parse_aggregation(name, text, TVL) for name, text in expressions.items()]


def test_aggregate_by_group_ignores_nulls() -> None:
    groups = aggregate(
        ROWS, ["chain"],
        aggs(n="count()", with_change="count(change_1d_pct)", total="sum(tvl_usd)", mean="avg(change_1d_pct)",
             low="min(tvl_usd)", high="max(tvl_usd)", median="p50(tvl_usd)"),
    )  # fmt: skip
    by_chain = {g.key["chain"]: g for g in groups}
    assert set(by_chain) == {"Ethereum", "Arbitrum", None}
    eth = by_chain["Ethereum"]
    assert eth.rows == 3
    assert eth.values == {
        "n": 3, "with_change": 2, "total": 140.0, "mean": -0.5, "low": 10.0, "high": 100.0, "median": 30.0,
    }  # fmt: skip
    arbitrum = by_chain["Arbitrum"].values
    # count(field) counts non-null values; a bool in a number field is no number for the others.
    assert arbitrum["with_change"] == 1 and arbitrum["mean"] is None
    assert by_chain[None].values["total"] == 7.0 and by_chain[None].values["with_change"] == 0


def test_aggregate_on_several_fields_and_none() -> None:
    groups = aggregate(ROWS, ["chain", "kind"], aggs(n="count()"))
    assert sorted((g.key["chain"] or "", g.key["kind"], g.values["n"]) for g in groups) == [
        ("", "protocol", 1), ("Arbitrum", "protocol", 1), ("Ethereum", "chain", 1),
        ("Ethereum", "protocol", 2),
    ]  # fmt: skip
    (everything,) = aggregate(ROWS, [], aggs(total="sum(tvl_usd)"))
    assert everything.key == {} and everything.rows == 5 and everything.values["total"] == 152.0


def test_aggregate_of_nothing_is_one_empty_group_without_group_by() -> None:
    (group,) = aggregate([], [], aggs(n="count()", total="sum(tvl_usd)", p="p90(tvl_usd)"))
    # As SQL: count is 0 and the others are null, never 0.
    assert group.values == {"n": 0, "total": None, "p": None}
    assert aggregate([], ["chain"], aggs(n="count()")) == []


def test_sum_of_ints_stays_exact_and_floats_use_fsum() -> None:
    fields = CHANNELS["chain"].fields
    big = [{"block_number": 2**60}, {"block_number": 1}]
    (group,) = aggregate(big, [], [parse_aggregation("s", "sum(block_number)", fields)])
    assert group.values["s"] == 2**60 + 1
    tiny = [{"tvl_usd": v} for v in (1e16, 1.0, -1e16, 1.0)]
    (group,) = aggregate(tiny, [], aggs(s="sum(tvl_usd)"))
    assert group.values["s"] == 2.0


def test_aggregate_matches_plain_python_on_real_data(data_dir: Path) -> None:
    values = chain_tvls(data_dir, "2021-11-01")
    rows = [{"tvl_usd": v} for v in values] + [{"tvl_usd": None}]
    (group,) = aggregate(rows, [], aggs(s="sum(tvl_usd)", a="avg(tvl_usd)", p="percentile(tvl_usd, 0.95)"))
    assert group.values["s"] == pytest.approx(math.fsum(values), rel=1e-12)
    assert group.values["a"] == pytest.approx(statistics.fmean(values), rel=1e-12)
    expected_p95 = statistics.quantiles(values, n=100, method="inclusive")[94]
    assert group.values["p"] == pytest.approx(expected_p95, rel=1e-12)


# --- time buckets --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("moment", "bucket", "expected"),
    [
        ("2022-05-09T13:45:10Z", "1h", "2022-05-09T13:00:00Z"),
        ("2022-05-09T13:45:10Z", "1d", "2022-05-09T00:00:00Z"),
        # 1970-01-01 was a Thursday: epoch-aligned weeks start on Thursdays.
        ("2022-05-09T13:45:10Z", "7d", "2022-05-05T00:00:00Z"),
        ("2022-05-05T00:00:00Z", "7d", "2022-05-05T00:00:00Z"),
        ("2022-05-04T23:59:59Z", "7d", "2022-04-28T00:00:00Z"),
        ("2022-05-09T13:45:10+02:00", "1h", "2022-05-09T11:00:00Z"),
        ("2022-05-09T00:30:00", "1d", "2022-05-09T00:00:00Z"),  # naive means UTC
    ],
)
def test_bucket_start(moment: str, bucket: str, expected: str) -> None:
    assert bucket_start(moment, bucket) == expected


def test_thirty_day_buckets_are_epoch_multiples() -> None:
    start = datetime.fromisoformat(bucket_start(datetime(2023, 3, 15, 12, tzinfo=UTC), "30d"))
    assert start.timestamp() % (30 * 86400) == 0
    assert start <= datetime(2023, 3, 15, 12, tzinfo=UTC) < start + timedelta(days=30)
    east = datetime(2023, 3, 15, 1, tzinfo=timezone(timedelta(hours=5)))
    assert bucket_start(east, "1d") == "2023-03-14T00:00:00Z"


# --- ordering and keyset -------------------------------------------------------------------------------

ITEMS: list[dict[str, Any]] = [
    {"id": 1, "tvl": 5.0, "name": "b"},
    {"id": 2, "tvl": None, "name": "a"},
    {"id": 3, "tvl": 9.0, "name": None},
    {"id": 4, "tvl": 5.0, "name": "a"},
    {"id": 5, "tvl": None, "name": None},
]


def ids(items: list[dict[str, Any]]) -> list[int]:
    return [item["id"] for item in items]


def test_order_puts_nulls_last_in_both_directions() -> None:
    ascending = order(list(ITEMS), [SortKey("tvl"), SortKey("id")], dict.get)
    assert ids(ascending) == [1, 4, 3, 2, 5]
    descending = order(list(ITEMS), [SortKey.parse("-tvl"), SortKey("id")], dict.get)
    assert ids(descending) == [3, 1, 4, 2, 5]
    by_name_desc = order(list(ITEMS), [SortKey.parse("-name"), SortKey.parse("-id")], dict.get)
    assert ids(by_name_desc) == [1, 4, 2, 5, 3]


def test_order_is_stable_and_mixed_types_do_not_crash() -> None:
    items = [{"id": i, "v": v} for i, v in enumerate(["x", 2, None, 1.5, "a", {"odd": 1}])]
    assert ids(order(items, [SortKey("v")], dict.get)) == [3, 1, 4, 0, 5, 2]


@pytest.mark.parametrize("sort", [["tvl", "id"], ["-tvl", "id"], ["-name", "-id"], ["name", "tvl", "-id"]])
def test_comes_after_agrees_with_order(sort: list[str]) -> None:
    keys = [SortKey.parse(s) for s in sort]
    ordered = order(list(ITEMS), keys, dict.get)
    values = [[item.get(k.field) for k in keys] for item in ordered]
    for i, before in enumerate(values):
        after = [j for j, mine in enumerate(values) if comes_after(mine, before, keys)]
        assert after == list(range(i + 1, len(values)))


# --- the fast paths agree with the plain definitions ---------------------------------------------------

# (No int beyond a float's range: orjson reads none, and fsum of one beside floats overflows.)
ODD_VALUES: list[Any] = [None, True, False, 0, 1, 2.5, -3, math.inf, -math.inf, math.nan, "x", [1], {"a": 1}]


def reference(rows: list[dict[str, Any]], group_by: list[str], aggs: list[Aggregation]) -> dict[Any, Any]:
    """Group and aggregate the slow, obvious way: what ``aggregate`` must equal."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in rows:
        key = tuple(
            v if v is None or isinstance(v, str | int | float | bool) else repr(v)
            for v in (row.get(f) for f in group_by)
        )
        groups.setdefault(key, []).append(row)
    out = {}
    for key, members in groups.items():
        values: dict[str, Any] = {}
        for a in aggs:
            present = [r.get(a.field) for r in members if a.field and r.get(a.field) is not None]
            numeric = [v for v in present if not isinstance(v, bool) and isinstance(v, int | float)]
            numbers = sorted(v for v in numeric if isinstance(v, int) or math.isfinite(v))
            if a.field is None:
                values[a.name] = len(members)
            elif a.function == "count":
                values[a.name] = len(present)
            elif not numbers:
                values[a.name] = None
            elif a.function == "sum":
                values[a.name] = (
                    sum(numbers) if all(isinstance(n, int) for n in numbers) else math.fsum(numbers)
                )
            elif a.function == "min":
                values[a.name] = numbers[0]
            elif a.function == "max":
                values[a.name] = numbers[-1]
            elif a.function == "avg":
                values[a.name] = math.fsum(numbers) / len(numbers)
            else:
                values[a.name] = percentile(numbers, a.q or 0.0)
        out[key] = (values, len(members))
    return out


@pytest.mark.parametrize("group_by", [[], ["g"], ["g", "h"]])
def test_aggregate_matches_the_plain_definition_on_odd_values(group_by: list[str]) -> None:
    rng = random.Random(7)
    rows = [
        {"g": rng.choice([*ODD_VALUES[:6], "a", "b"]), "h": rng.choice(["p", None, [2]]),
         "v": rng.choice(ODD_VALUES)}
        for _ in range(400)
    ]  # fmt: skip
    rows += [{"g": "a", "h": "p", "v": rng.uniform(-1e6, 1e6)} for _ in range(200)]
    fields: dict[str, FieldType] = {"v": "number"}
    aggs = [parse_aggregation(n, e, fields) for n, e in
            {"n": "count()", "c": "count(v)", "s": "sum(v)", "a": "avg(v)", "lo": "min(v)", "hi": "max(v)",
             "p": "p90(v)"}.items()]  # fmt: skip
    got = {tuple(g.key[f] for f in group_by): (g.values, g.rows) for g in aggregate(rows, group_by, aggs)}
    assert got == reference(rows, group_by, aggs)
    assert aggregate(iter(rows), group_by, aggs) == aggregate(rows, group_by, aggs)  # any iterable


@pytest.mark.parametrize("descending", [False, True])
def test_leading_keeps_every_row_the_first_page_can_hold(descending: bool) -> None:
    rng = random.Random(11)
    rows = [{"t": rng.choice([None, 1, 2, 2.5, 3, "s", 7]), "id": i} for i in range(500)]
    keys = [SortKey("t", descending), SortKey("id")]
    for limit in (1, 5, 50, 200, 600):
        everything = order(list(rows), keys, dict.get)[:limit]
        assert order(leading(rows, keys[0], limit, dict.get), keys, dict.get)[:limit] == everything
