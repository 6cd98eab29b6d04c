"""The evaluator's rule feed: rules and protocol categories as records arrive, joined like the sidecar."""

from __future__ import annotations

from typing import Any

import orjson
from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.partitioner import DefaultPartitioner

from pipeline.alerting.origin import raw_key, raw_partition
from pipeline.alerting.rule_book import RuleBook
from pipeline.alerting.rule_reader import RuleFeed
from pipeline.settings import Settings


def record(topic: str, key: str, value: Any) -> ConsumerRecord[bytes, bytes]:
    data = orjson.dumps(value) if value is not None else None
    return ConsumerRecord(topic, 0, 0, 0, 0, key.encode(), data, None, 0, 0, [])


def test_tvl_rows_get_their_protocol_category_as_the_sidecar_joins_it() -> None:
    feed = RuleFeed(Settings(topic_prefix="x."), RuleBook())
    meta = TopicPartition("x.protocols.meta", 0)
    feed.handle(meta, record("x.protocols.meta", "Aave V3", {"name": "Aave V3", "category": "Lending"}))
    lending = {"kind": "protocol", "protocol": "Aave V3", "chain": "Ethereum"}
    unknown = {"kind": "protocol", "protocol": "Nobody", "chain": "Ethereum"}
    chain = {"kind": "chain", "protocol": None, "chain": "Ethereum"}
    for row in (lending, unknown, chain):
        feed.enrich(row)
    assert lending["category"] == "Lending" and unknown["category"] is None and chain["category"] is None
    feed.handle(meta, record("x.protocols.meta", "Aave V3", None))
    assert "Aave V3" not in feed.categories


def test_rows_are_traced_to_the_raw_partition_their_key_hashes_to() -> None:
    assert raw_key("tvl", {"protocol": None, "chain": "Terra"}) == "chain|Terra"
    assert raw_key("tvl", {"protocol": "Aave", "chain": "Ethereum"}) == "Aave"
    assert raw_key("prices", {"coin": "coingecko:usd-coin"}) == "coingecko:usd-coin"
    assert raw_key("yields", {"pool": "p-1"}) == "p-1"
    # Kafka's own default partitioner is the reference.
    for key in ("chain|Terra", "Aave", "chain|Ethereum", "Uniswap V3"):
        row = {"protocol": None, "chain": key[6:]} if key.startswith("chain|") else {"protocol": key}
        assert raw_partition("tvl", row, 4) == DefaultPartitioner()(key.encode(), [0, 1, 2, 3], [0, 1, 2, 3])
