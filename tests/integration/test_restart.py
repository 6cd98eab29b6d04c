"""A worker killed with SIGKILL mid-replay and restarted ends exactly where an uninterrupted one does."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from pipeline.connectors.datasets import records_of
from pipeline.settings import Settings
from tests.integration.conftest import unique_settings
from tests.integration.support import (
    Message,
    WorkerProcess,
    read_all,
    read_table,
    read_topic,
    send_records,
    topic_end_offsets,
    wait_processed,
)

pytestmark = pytest.mark.integration

TABLES = ("tvl_state",)


def last_per_key(messages: list[Message]) -> dict[str, bytes]:
    return {m.key: m.value for m in messages}


@pytest.mark.timeout(900)
async def test_sigkill_mid_replay_loses_nothing(
    data_dir: Path, start_worker: Callable[[Settings], Awaitable[WorkerProcess]]
) -> None:
    records = [r for r in records_of("chain-tvl", data_dir) if r.ts >= 1577836800]  # 2020 onwards
    steady, killed = unique_settings(), unique_settings()
    await start_worker(steady)
    victim = await start_worker(killed)
    await send_records(steady, records)
    await send_records(killed, records)

    # Kill once a good part, but not all, of the replay has been processed.
    await read_topic(killed, "tvl.updates", until=lambda ms: len(ms) >= len(records) // 3, timeout=240)
    victim.kill()
    assert await topic_end_offsets(killed, "tvl.updates") < len(records), "killed too late to prove anything"
    victim.start()
    await victim.wait_ready()

    await wait_processed(steady, "tvl_state", "raw.tvl", timeout=400)
    await wait_processed(killed, "tvl_state", "raw.tvl", timeout=400)

    for table in TABLES:
        assert await read_table(killed, table) == await read_table(steady, table), table
    steady_out = await read_all(steady, "tvl.updates")
    killed_out = await read_all(killed, "tvl.updates")
    assert len(steady_out) == len(records) <= len(killed_out)
    assert last_per_key(killed_out) == last_per_key(steady_out)
    # At-least-once: the restart may repeat some updates, but never skips one.
    assert {(m.key, m.value) for m in killed_out} == {(m.key, m.value) for m in steady_out}
