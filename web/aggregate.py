"""Pure query evaluation: group_by with count/sum/avg/min/max/percentiles, UTC time buckets, ordering."""

from __future__ import annotations

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
    groups: dict[tuple[Any, ...], tuple[list[int], dict[str, list[Any]]]] = {}
    for row in rows:
        key = tuple(_hashable(row.get(f)) for f in group_by)
        entry = groups.get(key)
        if entry is None:
            entry = groups[key] = ([0], {f: [] for f in fields})
        entry[0][0] += 1
        for f in fields:
            value = row.get(f)
            if value is not None:
                entry[1][f].append(value)
    if not group_by and not groups:
        groups[()] = ([0], {f: [] for f in fields})  # as SQL: an aggregate of no rows is one row
    result = []
    for key, (count, collected) in groups.items():
        ordered: dict[str, list[int | float]] = {}
        values: dict[str, Value] = {}
        for a in aggregations:
            if a.field is None:
                values[a.name] = count[0]
            elif a.function == "count":
                values[a.name] = len(collected[a.field])
            else:
                if a.field not in ordered:
                    numbers = (_number(v) for v in collected[a.field])
                    ordered[a.field] = sorted(n for n in numbers if n is not None)
                values[a.name] = _evaluate(a, ordered[a.field])
        result.append(Group(dict(zip(group_by, key, strict=True)), values, count[0]))
    return result


def _evaluate(a: Aggregation, ordered: list[int | float]) -> Value:
    if not ordered:
        return None  # as SQL: no values is null, never 0
    if a.function == "sum":
        return sum(ordered) if all(isinstance(n, int) for n in ordered) else math.fsum(ordered)
    if a.function == "avg":
        return math.fsum(ordered) / len(ordered)
    if a.function == "min":
        return ordered[0]
    if a.function == "max":
        return ordered[-1]
    assert a.q is not None
    return percentile(ordered, a.q)


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


def comes_after(values: Sequence[Any], after: Sequence[Any], keys: Sequence[SortKey]) -> bool:
    """Whether a record with sort ``values`` sorts strictly after one with ``after`` (keyset paging)."""
    for key, mine, theirs in zip(keys, values, after, strict=True):
        convert = _descending if key.descending else _ascending
        a, b = convert(mine), convert(theirs)
        if a != b:
            return (a < b) if key.descending else (a > b)
    return False
