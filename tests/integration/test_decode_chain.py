"""The chain agent on the real broker: a day of Uniswap v3 logs decodes; bad logs are dead-lettered."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from pipeline.connectors.datasets import records_of
from pipeline.connectors.readers import ReplayRecord
from pipeline.settings import Settings
from tests.integration.support import WorkerProcess, read_topic, send_records

pytestmark = pytest.mark.integration

POOL = "0x88e6a0c2ddd26feeb64f039a2c41296fcb3f5640"


async def test_uniswap_logs_decode_to_chain_events(
    topics: Settings, ready_worker: WorkerProcess, data_dir: Path
) -> None:
    records = list(records_of("univ3-logs", data_dir))
    swap = next(
        r for r in records if r.value["address"] == POOL and r.value["topics"][0].startswith("0xc42079")
    )
    truncated = ReplayRecord(swap.ts, "raw.chain", swap.key, {**swap.value, "data": swap.value["data"][:-64]})
    await send_records(topics, records + [truncated])

    folder = data_dir / "chain" / "univ3_2024-01-05"
    twins = {}
    for path in folder.glob("*.pool.tick.csv"):
        with path.open(newline="") as handle:
            twins.update(
                {(row["transaction_hash"], int(row["log_index"])): row for row in csv.DictReader(handle)}
            )
    events = await read_topic(topics, "chain.events", until=lambda ms: len(ms) >= len(twins), timeout=180)
    assert len(events) == len(twins)
    for message in events:
        event = message.json()
        twin = twins[(event["tx_hash"], event["log_index"])]
        assert event["event"].upper() == twin["tx_type"]
        assert message.key == f"Ethereum|{event['address']}"
        # Wide integers travel as decimal strings (JSON readers lose precision past 2**53).
        assert event["args"]["amount0"] == twin["amount0"] and event["args"]["amount1"] == twin["amount1"]
        if event["event"] == "Swap":
            assert event["args"]["sqrtPriceX96"] == twin["sqrtPriceX96"]
            assert event["args"]["tick"] == int(float(twin["current_tick"]))

    letters = await read_topic(topics, "dlq.chain", until=lambda ms: len(ms) >= 1)
    assert len(letters) == 1
    assert "uniswap_v3 Swap" in letters[0].headers["dlq.reason"].decode()
    assert "hex digits" in letters[0].headers["dlq.reason"].decode()
