"""Back-tests over stored history: Terra's real daily chain TVL (../shared/data) written with the history
store's own upsert, replayed by POST /v1/alerts/backtest; the firing and resolving days are computed here
independently from the CSV."""

from __future__ import annotations

import asyncio
import csv
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import delete

from pipeline.settings import Settings
from pipeline.storage.history import record_updates
from pipeline.storage.models import HistoryPoint
from tests.integration.alerting import AlertApi, rule_body
from tests.integration.sidecar import Sidecar, new_key, running_sidecar
from web.backtest_routes import MAX_SERIES
from web.keys import ENGINE
from web.rule_publisher import RULE_PUBLISHER

pytestmark = pytest.mark.integration

CHAIN_TVL = (
    Path(__file__).parents[3] / ".." / "shared" / "data" / "defillama" / "chain_tvl_daily_2018-2023.csv"
)


def terra_days() -> list[tuple[datetime, float]]:
    """(time, TVL) of every day Terra has a value, from the file (its dates are local 19:00/20:00 stamps
    that the file means as UTC)."""
    with CHAIN_TVL.open(newline="") as handle:
        return [
            (datetime.fromisoformat(row["date"]).replace(tzinfo=UTC), float(row["Terra"]))
            for row in csv.DictReader(handle)
            if row["Terra"]
        ]


def chain_row(chain: str, moment: datetime, tvl: float) -> dict[str, Any]:
    return {
        "kind": "chain", "protocol": None, "chain": chain, "tvl_usd": tvl, "change_1h_pct": None,
        "change_1d_pct": None, "change_7d_pct": None, "as_of": moment.isoformat().replace("+00:00", "Z"),
        "stale": False, "source": "defillama",
    }  # fmt: skip


@pytest.fixture
async def sidecar(settings: Settings) -> AsyncIterator[Sidecar]:
    async with running_sidecar(settings) as sidecar:
        await asyncio.wait_for(sidecar.app[RULE_PUBLISHER].reconciled.wait(), 60)
        yield sidecar


@pytest.fixture
async def chain_prefix(sidecar: Sidecar) -> AsyncIterator[str]:
    """A chain name prefix of this test alone: the history table is shared by every test."""
    prefix = f"Test{uuid.uuid4().hex[:8]}"
    yield prefix
    async with sidecar.app[ENGINE].begin() as connection:
        await connection.execute(
            delete(HistoryPoint).where(HistoryPoint.series_key.startswith(f"chain||{prefix}"))
        )


async def test_terra_collapse_fires_on_the_days_the_file_says(
    settings: Settings, sidecar: Sidecar, chain_prefix: str
) -> None:
    chain = f"{chain_prefix}-Terra"
    days = terra_days()
    assert len(days) > 900, "the Terra column of the chain TVL file is missing or empty"
    written = await record_updates(
        sidecar.app[ENGINE],
        [("tvl", f"chain||{chain}", chain_row(chain, moment, tvl)) for moment, tvl in days],
    )
    assert written == 2 * len(days)  # one hourly and one daily bucket per day

    # Independently: the change over one day is below -20% (each row against the day before).
    start, end = datetime(2022, 1, 1, tzinfo=UTC), datetime(2023, 1, 1, tzinfo=UTC)
    holds = [
        (moment, (tvl / before - 1) * 100 < -20)
        for (_, before), (moment, tvl) in zip(days, days[1:], strict=False)
        if start <= moment < end
    ]
    fired = [m for i, (m, h) in enumerate(holds) if h and (i == 0 or not holds[i - 1][1])]
    resolved = [m for i, (m, h) in enumerate(holds) if not h and i > 0 and holds[i - 1][1]]
    assert fired[0] == datetime(2022, 5, 9, 20, tzinfo=UTC)  # UST's depeg week, as the file has it
    assert len(fired) == len(resolved) + (1 if holds[-1][1] else 0)

    async with aiohttp.ClientSession() as session:
        client = AlertApi(session, sidecar.url, await new_key(settings, "pro"))
        spec = rule_body(scope=f'chain == "{chain}"', enabled=False)
        window = {"from": start.isoformat(), "to": end.isoformat(), "resolution": "1d"}
        status, result = await client.call("POST", "/v1/alerts/backtest", {"rule": spec, **window})
        assert status == 200, result
        assert (result["series"], result["rows"]) == (1, sum(1 for m, _ in days if start <= m < end))

        def times(entries: list[dict[str, str]]) -> list[datetime]:
            return [datetime.fromisoformat(e["at"].replace("Z", "+00:00")) for e in entries]

        summary = result["summary"]
        assert times(summary["fired_at"]) == fired
        assert times(summary["resolved_at"]) == resolved
        assert summary["fired"] == len(fired) and summary["text"].startswith(
            f"would have fired {len(fired)} times"
        )
        firing = [t for t in result["transitions"] if t["state"] == "firing"]
        assert firing[0]["series_key"] == f"chain||{chain}" and firing[0]["value"] < -20

        # A saved (disabled) rule back-tests the same.
        status, saved = await client.call("POST", "/v1/alerts/rules", spec)
        assert status == 201, saved
        status, again = await client.call("POST", "/v1/alerts/backtest", {"rule_id": saved["id"], **window})
        assert status == 200, again
        assert again["summary"] == summary


async def test_backtests_are_bounded_and_errors_name_the_field(
    settings: Settings, sidecar: Sidecar, chain_prefix: str
) -> None:
    moment = datetime(2022, 5, 9, 20, tzinfo=UTC)
    chains = [f"{chain_prefix}-{i:04d}" for i in range(MAX_SERIES + 1)]
    await record_updates(
        sidecar.app[ENGINE], [("tvl", f"chain||{c}", chain_row(c, moment, 1e6)) for c in chains]
    )
    window = {"from": "2022-05-01", "to": "2022-06-01", "resolution": "1d"}
    async with aiohttp.ClientSession() as session:
        client = AlertApi(session, sidecar.url, await new_key(settings, "pro"))
        wide = rule_body(scope=f'chain startswith "{chain_prefix}-"')
        status, error = await client.call("POST", "/v1/alerts/backtest", {"rule": wide, **window})
        assert status == 400, error
        assert error["error"] | {"message": ""} == {
            "code": "backtest_too_wide", "message": "", "limit": MAX_SERIES, "found": MAX_SERIES + 1,
        }  # fmt: skip
        narrow = rule_body(scope=f'chain == "{chains[0]}"')
        status, result = await client.call("POST", "/v1/alerts/backtest", {"rule": narrow, **window})
        assert (status, result["series"], result["rows"], result["summary"]["fired"]) == (200, 1, 1, 0), (
            result
        )

        cases: list[tuple[dict[str, Any], str]] = [
            ({"rule": rule_body(scope="chain ==")}, "rule.scope"),
            ({"rule": rule_body(metric="chain")}, "rule.metric"),
            ({"rule": rule_body(condition={"kind": "change", "window": "1x", "op": "<", "value": 1})},
             "rule.condition.window"),
            ({"rule": narrow, "to": "2022-04-01"}, "to"),
            ({"rule": narrow, "rule_id": "rule_x"}, "rule"),
            ({"rule": narrow, "resolution": "5m"}, "resolution"),
        ]  # fmt: skip
        for change, field in cases:
            status, error = await client.call("POST", "/v1/alerts/backtest", {**window, **change})
            assert (status, error["error"]["field"]) == (400, field), (change, error)
        status, error = await client.call("POST", "/v1/alerts/backtest", {"rule_id": "rule_nope", **window})
        assert (status, error["error"]["code"]) == (404, "rule_not_found")
