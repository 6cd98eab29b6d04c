"""Bad input on the raw topics: dead-lettered with a reason, while valid records flow as in a clean run."""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import orjson
import pytest

from pipeline.connectors.datasets import records_of
from pipeline.connectors.readers import ReplayRecord
from pipeline.settings import Settings
from tests.integration.conftest import unique_settings
from tests.integration.support import Message, WorkerProcess, read_topic, send_records

pytestmark = pytest.mark.integration

DAY = 86400.0


def valid_records(data_dir: Path) -> list[ReplayRecord]:
    tvl = [r for r in records_of("chain-tvl", data_dir) if 1648771200 <= r.ts < 1648771200 + 30 * DAY]
    prices = list(itertools.islice(records_of("luna", data_dir), 3000))
    pools = list(itertools.islice(records_of("pool-chart", data_dir), 1000))
    return tvl + prices + pools


def malformed(i: int, rng: random.Random) -> tuple[str, bytes, str]:
    """(raw topic, value bytes, what is wrong with it): every kind of bad input the edge must catch."""
    ts = 1651363200 + i
    kinds: list[tuple[str, bytes, str]] = [
        ("raw.prices", b'{"coin": "coingecko:x", "price": "a lot", "ts": %d}' % ts, "price"),
        ("raw.prices", b'{"coin": "coingecko:x", "ts": %d}' % ts, "price"),
        ("raw.prices", b'{"coin": "coingecko:x", "price": NaN, "ts": %d}' % ts, "price"),
        ("raw.prices", b'{"coin": "no id here", "price": 1.0, "ts": %d}' % ts, "coin"),
        ("raw.tvl", b'{"chain": "Ethereum", "tvl_usd": -5, "ts": %d}' % ts, "tvl_usd"),
        ("raw.tvl", b'{"chain": "Ether<script>", "tvl_usd": 5, "ts": %d}' % ts, "chain"),
        ("raw.tvl", b'{"tvl_usd": 5, "ts": %d}' % ts, "protocol and chain are both null"),
        ("raw.tvl", b'{"chain": "Ethereum", "tvl_usd": 5, "ts": %d, "extra": 1}' % ts, "extra"),
        ("raw.yields", b"{not json", "Invalid JSON"),
        (
            "raw.yields",
            orjson.dumps(
                {
                    "pool": "p",
                    "chain": "Ethereum",
                    "project": "x",
                    "tvl_usd": 1,
                    "ts": ts,
                    "symbol": "x" * 70_000,
                }
            ),
            "oversized",
        ),
    ]
    return kinds[rng.randrange(len(kinds))]


async def test_malformed_records_go_to_the_dlq_and_valid_output_is_unchanged(
    data_dir: Path, start_worker: Callable[[Settings], Awaitable[WorkerProcess]]
) -> None:
    clean, dirty = unique_settings(), unique_settings()
    records = valid_records(data_dir)
    rng = random.Random(2022)
    bad = [malformed(i, rng) for i in range(1000)]
    mixed: list[ReplayRecord | tuple[str, bytes, str]] = list(records)
    for item in bad:
        mixed.insert(rng.randrange(len(mixed) + 1), item)

    await start_worker(clean)
    dirty_worker = await start_worker(dirty)
    await send_records(clean, records)
    await send_records(
        dirty,
        [
            # The sink sends bytes as they are: the malformed values reach Kafka byte for byte.
            item if isinstance(item, ReplayRecord) else ReplayRecord(0.0, item[0], "bad", item[1])  # type: ignore[arg-type]
            for item in mixed
        ],
    )

    # These replays hold no late records, so each valid record yields exactly one update.
    expected = {"tvl.updates": "raw.tvl", "price.updates": "raw.prices", "yields.updates": "raw.yields"}
    for logical, raw in expected.items():
        count = sum(1 for r in records if r.topic == raw)
        clean_out = await read_topic(clean, logical, until=lambda ms, n=count: len(ms) >= n, timeout=180)
        dirty_out = await read_topic(dirty, logical, until=lambda ms, n=count: len(ms) >= n, timeout=180)
        assert len(clean_out) == len(dirty_out) == count, logical
        assert _by_key(dirty_out) == _by_key(clean_out), logical

    letters = []
    for source in ("prices", "tvl", "yields"):
        wanted = sum(1 for topic, _, _ in bad if topic == f"raw.{source}")
        letters += await read_topic(dirty, f"dlq.{source}", until=lambda ms, n=wanted: len(ms) >= n)
    assert len(letters) == 1000
    sent = sorted(value for _, value, _ in bad)
    assert sorted(m.value for m in letters) == sent, "the DLQ keeps the original bytes"
    for letter in letters:
        reason = letter.headers["dlq.reason"].decode()
        assert reason and int(letter.headers["dlq.source.offset"]) >= 0
        assert letter.headers["dlq.source.topic"].decode().startswith(dirty.topic_prefix + "raw.")
    expected_words = sorted(word for _, _, word in bad)
    got_words = sorted(next(word for _, value, word in bad if value == letter.value) for letter in letters)
    assert got_words == expected_words
    for letter in letters:
        word = next(word for _, value, word in bad if value == letter.value)
        assert word in letter.headers["dlq.reason"].decode(), (word, letter.headers["dlq.reason"])

    # The worker counts what it accepted and rejected, per source, at /metrics.
    counts = await _metrics(dirty_worker.settings.worker_web_port)
    for source, raw in (("prices", "raw.prices"), ("tvl", "raw.tvl"), ("yields", "raw.yields")):
        assert counts[("rejected", source)] == sum(1 for topic, _, _ in bad if topic == raw)
        assert counts[("accepted", source)] == sum(1 for r in records if r.topic == raw)


async def _metrics(port: int) -> dict[tuple[str, str], float]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        text = await response.text()
    counts = {}
    for line in text.splitlines():
        match = re.match(r'llamastream_raw_records_total\{outcome="(\w+)",source="(\w+)"\} (\S+)', line)
        if match:
            counts[(match[1], match[2])] = float(match[3])
    return counts


def _by_key(messages: list[Message]) -> dict[str, list[bytes]]:
    by_key: dict[str, list[bytes]] = {}
    for m in messages:
        by_key.setdefault(m.key, []).append(m.value)
    return by_key
