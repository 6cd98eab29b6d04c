"""REST end to end: real files replayed by ``python -m pipeline.replay`` through the faust worker, served by a
sidecar on the same settings, and the answers checked against values computed here straight from the files.

The other REST tests fill the sidecar's replica themselves; this one is the only one where the numbers go
through raw topics, the agents, the derived topics and the replica's Kafka reader.
"""

from __future__ import annotations

import asyncio
import csv
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from pipeline.settings import Settings
from tests.integration.conftest import unique_settings
from tests.integration.sidecar import bearer, forget_test, new_key, running_sidecar
from tests.integration.support import ROOT, WorkerProcess, read_topic, settings_env

pytestmark = pytest.mark.integration

DAY = 86400.0
USDC = "coingecko:usd-coin"
# Terra's collapse: four days of every chain's TVL.
CHAINS_SINCE, CHAINS_UNTIL = "2022-05-06", "2022-05-10"
# The last ten days or so of each protocol history (Everlend and Nirvana V1 end earlier: not replayed).
PROTOCOLS_SINCE = "2025-12-10"


@pytest.fixture
def settings() -> Settings:
    # The endpoints checked read the replica only: no rollups written to the shared database.
    return unique_settings().model_copy(update={"history_writer": False})


def midnight(day: str) -> float:
    return datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp()


def utc_text(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def chain_tvl_by_day(data_dir: Path) -> dict[str, dict[str, float]]:
    """Day -> chain -> TVL in the window; an empty cell is no value. Dates are read by their date part."""
    with (data_dir / "defillama" / "chain_tvl_daily_2018-2023.csv").open(newline="") as handle:
        return {
            row["date"][:10]: {chain: float(cell) for chain, cell in row.items() if chain != "date" and cell}
            for row in csv.DictReader(handle)
            if CHAINS_SINCE <= row["date"][:10] < CHAINS_UNTIL
        }


def protocol_points(data_dir: Path) -> dict[str, list[tuple[float, float]]]:
    """Protocol name -> its (epoch s, total TVL) points in the window, oldest first."""
    since = midnight(PROTOCOLS_SINCE)
    points = {}
    for path in sorted((data_dir / "defillama" / "protocol_tvl").glob("*.json")):
        document = json.loads(path.read_bytes())
        kept = sorted(
            (p["date"], float(p["totalLiquidityUSD"])) for p in document["tvl"] if p["date"] >= since
        )
        if kept:
            points[document["name"]] = kept
    return points


def change_1d(points: list[tuple[float, float]]) -> float | None:
    """The newest point's 1d change as docs/topics.md defines it: against the point nearest one day earlier,
    if one is within half a day (the earlier one on a tie); unknown without one, or when that point is 0."""
    now, value = points[-1]
    near = sorted(
        (abs(ts - (now - DAY)), ts, tvl) for ts, tvl in points[:-1] if abs(ts - (now - DAY)) <= DAY / 2
    )
    if not near or near[0][2] == 0:
        return None
    then = near[0][2]
    return (value - then) / then * 100


def usdc_bars(data_dir: Path) -> list[dict[str, Any]]:
    bars = json.loads((data_dir / "prices" / "usdc_15m_depeg_2023-03.json").read_bytes())["data"]
    return sorted(bars, key=lambda b: b["dt"])


async def replay(settings: Settings, data_dir: Path, dataset: str, *window: str) -> None:
    """``python -m pipeline.replay`` as a person runs it, into this test's topics."""
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "pipeline.replay", dataset, "--data", str(data_dir), *window),
        cwd=ROOT,
        env=settings_env(settings),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    assert process.returncode == 0, f"replay of {dataset} failed:\n{output.decode()}"


async def test_rest_answers_match_the_replayed_files(
    settings: Settings, ready_worker: WorkerProcess, data_dir: Path
) -> None:
    days = chain_tvl_by_day(data_dir)
    protocols = protocol_points(data_dir)
    bars = usdc_bars(data_dir)
    await asyncio.gather(
        replay(settings, data_dir, "chain-tvl", "--since", CHAINS_SINCE, "--until", CHAINS_UNTIL),
        replay(settings, data_dir, "protocol-tvl", "--since", PROTOCOLS_SINCE),
        replay(settings, data_dir, "usdc"),
        replay(settings, data_dir, "protocol-meta"),
    )
    # Every daily point and every price tick (four per bar) yields one update: wait until the worker sent
    # them all, so the sidecar starts on the finished topics.
    tvl_updates = sum(map(len, days.values())) + sum(map(len, protocols.values()))
    sent = await read_topic(settings, "tvl.updates", until=lambda ms: len(ms) >= tvl_updates)
    assert len(sent) == tvl_updates
    sent = await read_topic(settings, "price.updates", until=lambda ms: len(ms) >= 4 * len(bars))
    assert len(sent) == 4 * len(bars)

    meta = {
        p["name"]: p for p in json.loads((data_dir / "defillama" / "protocols_2025-12-08.json").read_bytes())
    }
    key = await new_key(settings, "pro")  # live data, as a paying client sees it
    try:
        async with running_sidecar(settings) as sidecar, aiohttp.ClientSession(headers=bearer(key)) as http:

            async def get(path: str) -> Any:
                async with http.get(sidecar.url + path) as response:
                    assert response.status == 200, await response.text()
                    return await response.json()

            # /v2/chains: each chain's newest TVL in the window, dated the day it was taken.
            newest: dict[str, tuple[str, float]] = {}
            for day in sorted(days):
                newest |= {chain: (day, tvl) for chain, tvl in days[day].items()}
            chains = {c["name"]: c for c in await get("/v2/chains")}
            assert {name: c["tvl"] for name, c in chains.items()} == {
                n: tvl for n, (_, tvl) in newest.items()
            }
            assert {name: c["as_of"] for name, c in chains.items()} == {
                n: f"{day}T00:00:00Z" for n, (day, _) in newest.items()
            }
            assert chains["Terra"]["tvl"] == days["2022-05-09"]["Terra"] < 0.6 * days["2022-05-08"]["Terra"]

            # /protocols: every replayed protocol, largest first, with its newest TVL and 1d change.
            listed = await get("/protocols")
            expected = sorted((-points[-1][1], name) for name, points in protocols.items())
            assert [(-p["tvl"], p["name"]) for p in listed] == expected
            by_name = {p["name"]: p for p in listed}
            for name, points in protocols.items():
                entry, change = by_name[name], change_1d(points)
                want = None if change is None else pytest.approx(change, rel=1e-12)
                assert entry["change_1d"] == want, name
                assert entry["as_of"] == utc_text(points[-1][0]), name
                assert entry["category"] == (meta.get(name, {}).get("category") or None), name
            # Both outcomes occur: known changes, and unknown ones where the day before is missing.
            assert by_name["Drift"]["change_1d"] is not None and by_name["Moar Market"]["change_1d"] is None

            # /prices/current: the close of the newest 15-minute bar, timed inside that bar.
            body = await get(f"/prices/current/{USDC},coingecko:tether")
            usdc, last = body["coins"][USDC], bars[-1]
            start = datetime.fromisoformat(last["dt"]).timestamp()
            assert (usdc["price"], usdc["symbol"]) == (last["c"], "USDC")
            assert start <= usdc["timestamp"] < start + 900
            assert body["unknown"] == ["coingecko:tether"]
    finally:
        await forget_test(settings)
