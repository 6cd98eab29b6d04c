"""What the contenders of bench/pipeline_bench.py share: the input records and the aggregation step.

The aggregation step is the agents' per-record work (agents/aggregate_prices.py, aggregate_tvl.py)
with the faust parts taken out: validate with ``parse_record``, ``observe`` the point (with its source
offset) in the aggregation's state, flag staleness per (source, partition), build the update with
``price_update`` / ``tvl_update``, serialise it with orjson. The state store is any
``MutableMapping``: a plain dict in the plain loop and the reference run, a Quix Streams state
adapter in the Quix contender (a changelog-backed faust table in the real agents).
"""

from __future__ import annotations

import argparse
import heapq
import inspect
import os
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka.partitioner import murmur2

from pipeline.connectors.datasets import records_of
from pipeline.connectors.readers import ReplayRecord
from pipeline.observe import Observation, Watermarks, observe
from pipeline.prices import PRICE_SERIES, price_update
from pipeline.records import RawPrice, RawTvl
from pipeline.settings import Settings
from pipeline.tvl import TVL_SERIES, tvl_key, tvl_update
from pipeline.validation import Rejected, parse_record

__all__ = [
    "BASE_DATASETS",
    "InputRecord",
    "input_records",
    "partition_of",
    "Aggregator",
    "settings_env",
]

# Real history, prices and TVL: one-minute and hourly bars (four ticks each), daily chain and protocol TVL.
BASE_DATASETS = ("luna", "usde", "eth-btc-hourly", "chain-tvl", "protocol-tvl")


@dataclass(frozen=True, slots=True)
class InputRecord:
    topic: str  # logical raw topic: raw.prices or raw.tvl
    key: bytes
    value: bytes  # the JSON the raw topic carries
    partition: int
    fields: dict[str, Any]  # the decoded value (for matching outputs to inputs in the latency run)


def contender_parser(prog: str) -> argparse.ArgumentParser:
    """The arguments every contender process takes: its consumer group and its topics."""
    parser = argparse.ArgumentParser(prog=prog)
    for name in ("--group", "--in-prices", "--in-tvl", "--out-prices", "--out-tvl"):
        parser.add_argument(name, required=True)
    return parser


def partition_of(key: bytes, partitions: int) -> int:
    """The partition aiokafka's (and Kafka's Java client's) default partitioner picks for a key."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


_BASE: list[list[ReplayRecord]] | None = None


def _base() -> list[list[ReplayRecord]]:
    global _BASE
    if _BASE is None:
        # BENCH_DATA: the shared data folder, when this code runs from a snapshot (pipeline_bench.py)
        # and pipeline.connectors.datasets cannot find it relative to itself.
        data = Path(os.environ["BENCH_DATA"]) if os.environ.get("BENCH_DATA") else None
        _BASE = [list(records_of(name, data)) for name in BASE_DATASETS]
    return _BASE


def _interleaved(datasets: list[list[ReplayRecord]]) -> Iterator[ReplayRecord]:
    """Every dataset in its own order (so each key stays in event-time order), spread proportionally:
    any prefix of the stream holds each dataset in the share it has of the whole (~77% prices)."""
    streams = [((i / len(records), d, r) for i, r in enumerate(records)) for d, records in enumerate(datasets)]
    for _, _, record in heapq.merge(*streams, key=lambda item: (item[0], item[1])):
        yield record


def _copied(record: ReplayRecord, suffix: str) -> tuple[str, dict[str, Any]]:
    """The record as copy ``suffix`` of the data: same times and values, its own coin/protocol/chain."""
    if not suffix:
        return record.key, record.value
    value = dict(record.value)
    if record.topic == "raw.prices":
        value["coin"] = f"{value['coin']}{suffix}"
    else:
        if value.get("protocol"):
            value["protocol"] = f"{value['protocol']}{suffix}"
        if value.get("chain"):
            value["chain"] = f"{value['chain']}{suffix}"
    return f"{record.key}{suffix}", value


def input_records(count: int, partitions: int, first_copy: int = 1) -> Iterator[InputRecord]:
    """``count`` raw price and TVL records from the real data, repeated as distinct copies when it runs
    out: copy 2 is the same history for ``coingecko:ethereum-c2``, ``Ethereum-c2``, ``Aave-c2``..."""
    base = _base()
    produced = 0
    copy = first_copy
    while True:
        suffix = "" if copy == 1 else f"-c{copy}"
        for record in _interleaved(base):
            if produced >= count:
                return
            key, value = _copied(record, suffix)
            key_bytes = key.encode()
            yield InputRecord(record.topic, key_bytes, orjson.dumps(value), partition_of(key_bytes, partitions), value)
            produced += 1
        copy += 1


Store = MutableMapping[str, Any]

# The agents' call, checked once so that a change of pipeline.observe fails here, loudly, and not as
# a silently different aggregation: observe(state, spec, series, ts, value, offset).
_OBSERVE_PARAMS = list(inspect.signature(observe).parameters)
assert _OBSERVE_PARAMS[:6] == ["state", "spec", "series", "ts", "value", "offset"], (
    f"pipeline.observe.observe{inspect.signature(observe)} changed: update bench/common.py Aggregator "
    "to do what agents/aggregate_prices.py and aggregate_tvl.py do"
)


@dataclass
class Aggregator:
    """The agents' per-record work on an injectable state store (one per aggregation, like the agents'
    ``price_state`` / ``tvl_state`` tables); one instance per process (it holds the watermarks)."""

    settings: Settings
    price_watermarks: Watermarks = field(default_factory=Watermarks)
    tvl_watermarks: Watermarks = field(default_factory=Watermarks)

    def price(self, raw: bytes | None, partition: int, offset: int, state: Store) -> tuple[str, bytes] | Rejected | None:
        """``(output key, output value)``, a ``Rejected`` (the agent dead-letters it), or None when the
        observation is skipped (late, or redelivered after a restart) and the agent publishes nothing."""
        record = parse_record(raw, RawPrice, self.settings.max_record_bytes)
        if isinstance(record, Rejected):
            return record
        ts = record.ts.timestamp()
        observation = observe(state, PRICE_SERIES, record.coin, ts, record.price, offset)
        if not isinstance(observation, Observation):
            return None  # skipped: late (or redelivered), nothing to publish
        stale = self.price_watermarks.is_stale(record.source, partition, ts, self.settings.price_stale_after_s)
        update = price_update(record, observation, stale)
        return record.coin, orjson.dumps(update)

    def tvl(self, raw: bytes | None, partition: int, offset: int, state: Store) -> tuple[str, bytes] | Rejected | None:
        record = parse_record(raw, RawTvl, self.settings.max_record_bytes)
        if isinstance(record, Rejected):
            return record
        key = tvl_key(record)
        ts = record.ts.timestamp()
        observation = observe(state, TVL_SERIES, key, ts, record.tvl_usd, offset)
        if not isinstance(observation, Observation):
            return None
        stale = self.tvl_watermarks.is_stale(record.source, partition, ts, self.settings.tvl_stale_after_s)
        update = tvl_update(record, observation, stale)
        return key, orjson.dumps(update)


def settings_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment that makes ``get_settings()`` in a child process return ``settings``."""
    env = dict(os.environ)
    for name, value in settings.model_dump().items():
        env[f"LLAMA_{name.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
    env.update(extra)
    return env
