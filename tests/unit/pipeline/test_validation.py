"""Validation at the edge: each kind of bad record is rejected with a reason naming what was wrong."""

from __future__ import annotations

import orjson
import pytest

from pipeline.records import RawLog, RawPrice, RawTvl, RawYield
from pipeline.validation import Rejected, parse_record

LIMIT = 64 * 1024


@pytest.mark.parametrize(
    ("model", "value", "names"),
    [
        (RawPrice, b'{"coin": "coingecko:eth", "price": "abc", "ts": 1}', "price"),
        (RawPrice, b'{"coin": "coingecko:eth", "price": NaN, "ts": 1}', "finite"),
        (RawPrice, b'{"coin": "coingecko:eth", "price": 0, "ts": 1}', "greater than 0"),
        (RawPrice, b'{"coin": "eth", "price": 1, "ts": 1}', "coin"),
        (RawPrice, b'{"coin": "coingecko:eth", "ts": 1}', "price: Field required"),
        (RawTvl, b'{"chain": "Ethereum", "tvl_usd": -1, "ts": 1}', "tvl_usd"),
        (RawTvl, b'{"chain": "Eth/../x", "tvl_usd": 1, "ts": 1}', "chain"),
        (RawTvl, b'{"tvl_usd": 1, "ts": 1}', "both null"),
        (RawTvl, b'{"chain": "Ethereum", "tvl_usd": 1, "ts": 1, "rogue": true}', "rogue"),
        (RawTvl, b'{"chain": "Ethereum", "tvl_usd": 1, "ts": "yesterday"}', "ts"),
        (RawYield, b"[1, 2]", "object"),
        (RawYield, b"\xff\xfe", "Invalid JSON"),
        (
            RawLog,
            b'{"chain": "Ethereum", "block_number": 1, "tx_hash": "0x12", "tx_index": 0, "log_index": 0,'
            b' "address": "0x88e6a0c2ddd26feeb64f039a2c41296fcb3f5640", "topics": [], "data": "0x", "ts": 1}',
            "tx_hash",
        ),
    ],
)
def test_bad_records_are_rejected_with_the_field_named(model: type, value: bytes, names: str) -> None:
    result = parse_record(value, model, LIMIT)
    assert isinstance(result, Rejected)
    assert names in result.reason


def test_oversized_and_empty_records_are_rejected_before_parsing() -> None:
    big = orjson.dumps({"coin": "coingecko:eth", "price": 1, "ts": 1, "symbol": "x" * LIMIT})
    assert parse_record(big, RawPrice, LIMIT) == Rejected(
        f"oversized record: {len(big)} bytes, the limit is {LIMIT}"
    )
    assert isinstance(parse_record(None, RawPrice, LIMIT), Rejected)


def test_valid_records_parse_with_utc_event_time() -> None:
    tvl = parse_record(
        b'{"chain": "Plume (Deprecated)", "tvl_usd": 5, "ts": "2022-05-09T00:00:00"}', RawTvl, LIMIT
    )
    assert isinstance(tvl, RawTvl) and tvl.ts.timestamp() == 1652054400
    price = parse_record(b'{"coin": "ethereum:0xA0b8", "price": 1.0, "ts": 1652054400.5}', RawPrice, LIMIT)
    assert isinstance(price, RawPrice) and price.confidence == 0.99
