"""Pure query evaluation: group_by with count/sum/avg/min/max/percentiles, UTC time buckets, ordering."""

from __future__ import annotations

import heapq
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pipeline.channels import FieldType

__all__ = [
    "AggregationError",
    "Aggregation",
    "Group",
    "SortKey",
    "BUCKETS",
    "NUMERIC_TYPES",
    "FUNCTIONS",
    "parse_aggregation",
    "percentile",
    "aggregate",
    "bucket_start",
    "iso",
    "order",
    "leading",
    "comes_after",
]

# Buckets are aligned to the UTC epoch, so "7d" weeks start on Thursdays and "30d" is not a calendar month.
BUCKETS: dict[str, int] = {"1h": 3600, "1d": 86400, "7d": 7 * 86400, "30d": 30 * 86400}
NUMERIC_TYPES = frozenset({"number", "int"})
_PERCENTILES = {"p50": 0.5, "p90": 0.9, "p95": 0.95, "p99": 0.99}
FUNCTIONS = ("count", "sum", "avg", "min", "max", *_PERCENTILES, "percentile")
_CALL = re.compile(r"^\s*([A-Za-z_]\w*)\s*\(\s*([^(),]*?)\s*(?:,\s*([^(),]*?)\s*)?\)\s*$")

Value = int | float | None


class AggregationError(ValueError):
    """An aggregation expression that does not parse or does not fit the channel's fields."""


@dataclass(frozen=True)
class Aggregation:
    name: str
    function: str  # count, sum, avg, min, max or percentile
    field: str | None  # None only for count(): rows rather than non-null values
    q: float | None = None  # the quantile of percentile, 0..1


@dataclass
class Group:
    key: dict[str, Any]
    values: dict[str, Value]
    rows: int


@dataclass(frozen=True)
class SortKey:
    field: str
    descending: bool = False

    @classmethod
    def parse(cls, item: str) -> SortKey:
        return cls(item[1:], True) if item.startswith("-") else cls(item.removeprefix("+"))


def parse_aggregation(name: str, expression: str, fields: Mapping[str, FieldType]) -> Aggregation:
    """``sum(tvl_usd)`` -> Aggregation, checked against the field types (numeric for all but count)."""
    match = _CALL.match(expression)
    if not match:
        raise AggregationError(
            f"aggregation {name!r}: cannot parse {expression!r}; write function(field), e.g. sum(tvl_usd)"
        )
    function, field, extra = match.group(1).lower(), match.group(2), match.group(3)
    if function not in FUNCTIONS:
        raise AggregationError(
            f"aggregation {name!r}: unknown function {match.group(1)!r}; use one of {', '.join(FUNCTIONS)}"
        )
    if extra is not None and function != "percentile":
        raise AggregationError(f"aggregation {name!r}: {function}() takes one field, got {expression!r}")
    if function == "count" and not field:
        return Aggregation(name, "count", None)
    if not field:
        raise AggregationError(f"aggregation {name!r}: {function}() needs a field, e.g. {function}(tvl_usd)")
    if field not in fields:
        raise AggregationError(
            f"aggregation {name!r}: unknown field {field!r}; fields are {', '.join(sorted(fields))}"
        )
    if function != "count" and fields[field] not in NUMERIC_TYPES:
        raise AggregationError(
            f"aggregation {name!r}: {function}() needs a numeric field, but {field!r} is {fields[field]}"
        )
    if function in _PERCENTILES:
        return Aggregation(name, "percentile", field, _PERCENTILES[function])
    if function != "percentile":
        return Aggregation(name, function, field)
    q = _quantile(name, extra)
    return Aggregation(name, "percentile", field, q)


def _quantile(name: str, text: str | None) -> float:
    try:
        q = float(text) if text else math.nan
    except ValueError:
        q = math.nan
    if not 0.0 <= q <= 1.0:  # also rejects NaN
        raise AggregationError(
            f"aggregation {name!r}: percentile(field, q) needs q between 0 and 1, got {text!r}"
        )
    return q


def percentile(ordered: Sequence[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default, Hyndman-Fan type 7).

    Equals ``statistics.quantiles(data, n=100, method="inclusive")[k - 1]`` for q = k/100.
    """
    if not ordered:
        return None
    rank = (len(ordered) - 1) * q
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (rank - low) * (ordered[high] - ordered[low])


def _number(value: Any) -> int | float | None:
    # bool is an int subclass: a bool in a numeric field is bad data, not 0/1.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value if isinstance(value, int) or math.isfinite(value) else None


def _hashable(value: Any) -> Any:
    return value if value is None or isinstance(value, str | int | float | bool) else repr(value)


def aggregate(
    rows: Iterable[Mapping[str, Any]], group_by: Sequence[str], aggregations: Sequence[Aggregation]
) -> list[Group]:
    """One group per distinct group_by key (one group in all when group_by is empty); nulls ignored."""
    fields = sorted({a.field for a in aggregations if a.field is not None})
    groups = _group(rows, group_by)
    if not group_by and not groups:
        groups[()] = []  # as SQL: an aggregate of no rows is one row
    result = []
    for key, members in groups.items():
        # One pass per field over the group's rows, rather than one per row over the fields.
        collected = {f: [v for row in members if (v := row.get(f)) is not None] for f in fields}
        numbers: dict[str, list[int | float]] = {}
        values: dict[str, Value] = {}
        for a in aggregations:
            if a.field is None:
                values[a.name] = len(members)
            elif a.function == "count":
                values[a.name] = len(collected[a.field])
            else:
                if a.field not in numbers:
                    numbers[a.field] = _numbers(collected[a.field])
                values[a.name] = _evaluate(a, numbers[a.field])
        result.append(Group(dict(zip(group_by, key, strict=True)), values, len(members)))
    return result


def _group(rows: Iterable[Mapping[str, Any]], group_by: Sequence[str]) -> dict[tuple[Any, ...], list[Any]]:
    rows = rows if isinstance(rows, list) else list(rows)
    if not group_by:
        return {(): rows} if rows else {}
    groups: dict[tuple[Any, ...], list[Any]] = {}
    try:
        if len(group_by) == 1:
            (name,) = group_by
            single: dict[Any, list[Any]] = {}
            for row in rows:
                value = row.get(name)
                if (members := single.get(value)) is None:
                    single[value] = [row]
                else:
                    members.append(row)
            groups = {(value,): members for value, members in single.items()}
        else:
            for row in rows:
                key = tuple([row.get(f) for f in group_by])
                if (members := groups.get(key)) is None:
                    groups[key] = [row]
                else:
                    members.append(row)
        if all(_plain(value) for key in groups for value in key):
            return groups
    except TypeError:  # an unhashable value (a list, say)
        pass
    # Values other than null, strings, numbers and booleans are grouped by their repr.
    groups = {}
    for row in rows:
        groups.setdefault(tuple(_hashable(row.get(f)) for f in group_by), []).append(row)
    return groups


def _plain(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _numbers(values: list[Any]) -> list[int | float]:
    """The values that count as numbers: ints and finite floats, never bools (see ``_number``)."""
    numbers = [v for v in values if type(v) is float or type(v) is int]
    try:
        finite = all(map(math.isfinite, numbers))
    except OverflowError:  # an int beyond a float's range: finite, but the slow way tells
        finite = False
    if len(numbers) == len(values) and finite:
        return numbers
    return [n for v in values if (n := _number(v)) is not None]


def _evaluate(a: Aggregation, numbers: list[int | float]) -> Value:
    if not numbers:
        return None  # as SQL: no values is null, never 0
    if a.function == "sum":
        return sum(numbers) if all(type(n) is int for n in numbers) else math.fsum(numbers)
    if a.function == "avg":
        return math.fsum(numbers) / len(numbers)
    if a.function == "min":
        return min(numbers)
    if a.function == "max":
        return max(reversed(numbers))  # of equal ones (1 and 1.0), the last, as a stable sort would give
    assert a.q is not None
    return percentile(sorted(numbers), a.q)


def iso(moment: datetime) -> str:
    """ISO 8601 UTC in whole seconds with a Z, as the derived topics write times (string order = time)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def bucket_start(moment: datetime | str, bucket: str) -> str:
    """Start of the UTC-epoch-aligned bucket holding ``moment`` (naive means UTC), as ISO 8601."""
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    seconds = BUCKETS[bucket]
    epoch = math.floor(moment.timestamp() / seconds) * seconds
    return iso(datetime.fromtimestamp(epoch, UTC))


def _sort_value(value: Any) -> tuple[int, Any]:
    # Ranked by type so a value of an unexpected type still compares (numbers, then strings, then others).
    if isinstance(value, int | float):
        return (0, value)
    if isinstance(value, str):
        return (1, value)
    return (2, repr(value))


def _ascending(value: Any) -> tuple[int, tuple[int, Any]]:
    return (1, (0, 0)) if value is None else (0, _sort_value(value))  # nulls after every value


def _descending(value: Any) -> tuple[int, tuple[int, Any]]:
    return (0, (0, 0)) if value is None else (1, _sort_value(value))  # reversed: nulls last again


def order(items: list[Any], keys: Sequence[SortKey], get: Callable[[Any, str], Any]) -> list[Any]:
    """Sort by the keys (the first most significant), nulls last in both directions; stable."""
    for key in reversed(keys):
        convert = _descending if key.descending else _ascending

        def sort_key(item: Any, field: str = key.field, convert: Any = convert) -> Any:
            return convert(get(item, field))

        items.sort(key=sort_key, reverse=key.descending)
    return items


def leading(items: list[Any], key: SortKey, limit: int, get: Callable[[Any, str], Any]) -> list[Any]:
    """The items that can be among the first ``limit`` in an order whose first key is ``key``: the first
    ``limit`` by that key and every item tied with the last of them (later keys may still reorder those).
    In their original order, so sorting them is as stable as sorting all of them."""
    if len(items) <= limit * 2:
        return items
    convert = _descending if key.descending else _ascending
    ranks = [convert(get(item, key.field)) for item in items]
    if key.descending:
        bound = heapq.nlargest(limit, ranks)[-1]
        return [item for item, rank in zip(items, ranks, strict=True) if rank >= bound]
    bound = heapq.nsmallest(limit, ranks)[-1]
    return [item for item, rank in zip(items, ranks, strict=True) if rank <= bound]


def comes_after(values: Sequence[Any], after: Sequence[Any], keys: Sequence[SortKey]) -> bool:
    """Whether a record with sort ``values`` sorts strictly after one with ``after`` (keyset paging)."""
    for key, mine, theirs in zip(keys, values, after, strict=True):
        convert = _descending if key.descending else _ascending
        a, b = convert(mine), convert(theirs)
        if a != b:
            return (a < b) if key.descending else (a > b)
    return False
