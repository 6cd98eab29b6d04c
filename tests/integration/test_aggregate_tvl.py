"""The TVL agent on the real broker: Terra's collapse replayed from the chain TVL CSV."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from pipeline.connectors.datasets import records_of
from pipeline.settings import Settings
from tests.integration.support import Message, WorkerProcess, read_topic, send_records

pytestmark = pytest.mark.integration

CRASH_DAYS = ["2022-05-09", "2022-05-10", "2022-05-11", "2022-05-12", "2022-05-13"]


def terra_by_day(data_dir: Path) -> dict[str, float]:
    """Terra's TVL per day straight from the CSV, independently of the replay readers."""
    with (data_dir / "defillama" / "chain_tvl_daily_2018-2023.csv").open(newline="") as handle:
        return {row["date"][:10]: float(row["Terra"]) for row in csv.DictReader(handle) if row["Terra"]}


def terra_updates(messages: list[Message]) -> dict[str, dict]:  # type: ignore[type-arg]
    return {m.json()["as_of"][:10]: m.json() for m in messages if m.key == "chain||Terra"}


async def test_terra_daily_changes_match_the_csv(
    topics: Settings, ready_worker: WorkerProcess, data_dir: Path
) -> None:
    records = [r for r in records_of("chain-tvl", data_dir) if "2022-04-01" <= _day(r.ts) <= "2022-05-20"]
    await send_records(topics, records)

    # Daily rows never arrive late, so every record yields exactly one update.
    messages = await read_topic(topics, "tvl.updates", until=lambda ms: len(ms) >= len(records))
    updates = terra_updates(messages)
    tvl = terra_by_day(data_dir)
    from datetime import date, timedelta

    for day in CRASH_DAYS:
        previous = (date.fromisoformat(day) - timedelta(days=1)).isoformat()
        expected = (tvl[day] - tvl[previous]) / tvl[previous] * 100
        got = updates[day]["change_1d_pct"]
        assert got == pytest.approx(expected, rel=1e-9), day
        week_before = (date.fromisoformat(day) - timedelta(days=7)).isoformat()
        assert updates[day]["change_7d_pct"] == pytest.approx(
            (tvl[day] / tvl[week_before] - 1) * 100, rel=1e-9
        )
        assert updates[day]["tvl_usd"] == tvl[day]
        # Daily data has no point one hour earlier: the change is unknown, never 0.
        assert updates[day]["change_1h_pct"] is None
        assert updates[day]["kind"] == "chain" and updates[day]["protocol"] is None
        assert updates[day]["as_of"] == f"{day}T00:00:00Z" and updates[day]["stale"] is False
    # The first day replayed has nothing to compare with.
    first = updates["2022-04-01"]
    assert first["change_1d_pct"] is None and first["change_7d_pct"] is None
    # Every chain in the window got its updates, in event-time order per key.
    by_key: dict[str, list[str]] = {}
    for m in messages:
        by_key.setdefault(m.key, []).append(m.json()["as_of"])
    assert all(times == sorted(times) for times in by_key.values())
    assert len(messages) == len(records) and "2022-05-20" in updates


def _day(ts: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC).date().isoformat()
