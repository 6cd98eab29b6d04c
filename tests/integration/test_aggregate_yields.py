"""The yields agent on the real broker: daily pool history becomes APY changes in percentage points."""

from __future__ import annotations

import csv
from datetime import datetime
from pathlib import Path

import pytest

from pipeline.connectors.datasets import records_of
from pipeline.settings import Settings
from tests.integration.support import WorkerProcess, read_topic, send_records

pytestmark = pytest.mark.integration


async def test_pool_apy_changes_match_the_chart(
    topics: Settings, ready_worker: WorkerProcess, data_dir: Path
) -> None:
    records = [r for r in records_of("pool-chart", data_dir) if r.ts < 1690000000]  # 2023-04 to 2023-07
    pool = records[-1].key
    await send_records(topics, records)
    messages = await read_topic(
        topics, "yields.updates", until=lambda ms: len(ms) >= len(records), timeout=180
    )
    assert len(messages) == len(records)

    with (data_dir / "yields" / "pool_chart_daily_2023-2025.csv").open(newline="") as handle:
        chart = sorted(
            (datetime.fromisoformat(row["timestamp"].replace("Z", "+00:00")).timestamp(), row)
            for row in csv.DictReader(handle)
            if row["pool_id"] == pool
        )
    updates = {m.json()["as_of"]: m.json() for m in messages if m.key == pool}
    checked = nulls = 0
    for ts_now, now in chart:
        if ts_now >= 1690000000 or not now["apy"]:
            continue
        update = next(
            u
            for as_of, u in updates.items()
            if abs(datetime.fromisoformat(as_of.replace("Z", "+00:00")).timestamp() - ts_now) < 1e-3
        )
        # Independently: the chart point nearest one day earlier, within half a day, with an APY.
        near = [
            (abs(ts - (ts_now - 86400)), row)
            for ts, row in chart
            if ts < ts_now and row["apy"] and abs(ts - (ts_now - 86400)) <= 43200
        ]
        if near:
            then = min(near, key=lambda item: item[0])[1]
            assert update["apy_change_1d"] == pytest.approx(float(now["apy"]) - float(then["apy"]), abs=1e-9)
            checked += 1
        else:
            assert update["apy_change_1d"] is None
            nulls += 1
    assert checked >= 30, (checked, nulls)
