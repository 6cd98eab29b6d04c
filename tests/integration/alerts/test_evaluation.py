"""The alert evaluator on the real broker: real crises replayed through the pipeline, rules on alerts.rules,
transitions read back from alerts.triggered and compared with what the data files say."""

from __future__ import annotations

import asyncio
import csv
import json
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from pipeline.alerting.backtest import backtest
from pipeline.alerting.rules import Rule
from pipeline.connectors.datasets import records_of
from pipeline.settings import Settings
from tests.integration.alerting import publish_rules, stored_rule
from tests.integration.support import WorkerProcess, read_all, read_table, read_topic, send_records

pytestmark = pytest.mark.integration

DAY = 86400.0


def chain_tvl(data_dir: Path, chain: str) -> dict[str, float]:
    """Day -> TVL of one chain straight from the CSV (days with an empty cell are absent)."""
    with (data_dir / "defillama" / "chain_tvl_daily_2018-2023.csv").open(newline="") as handle:
        return {row["date"][:10]: float(row[chain]) for row in csv.DictReader(handle) if row[chain]}


def _day(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).date().isoformat()


def _shift(day: str, days: int) -> str:
    return (date.fromisoformat(day) + timedelta(days=days)).isoformat()


async def _run(
    worker: WorkerProcess, settings: Settings, rules: list[dict[str, Any]], records: list[Any]
) -> list[dict[str, Any]]:
    """Publish the rules, start the worker (it loads every rule before evaluating), replay the records,
    wait until the evaluator has applied the last row of every series, and return alerts.triggered."""
    await publish_rules(settings, {rule["id"]: rule for rule in rules})
    worker.start()
    await worker.wait_ready()
    await send_records(settings, records)
    last: dict[str, float] = {}
    for record in records:
        key = _series_of(record)
        last[key] = max(last.get(key, record.ts), record.ts)
    await _wait_evaluated(settings, last)
    return [m.json() for m in await read_all(settings, "alerts.triggered")]


def _series_of(record: Any) -> str:
    value = record.value
    if record.topic == "raw.tvl":
        kind = "chain" if value["protocol"] is None else "protocol"
        return f"{kind}|{value['protocol'] or ''}|{value['chain'] or ''}"
    return str(value["coin"])


async def _wait_evaluated(settings: Settings, last: dict[str, float], timeout: float = 240.0) -> None:
    """The evaluator records, per series, the as_of of the last row it applied (written last)."""
    deadline = time.monotonic() + timeout
    while True:
        state = await read_table(settings, "alert_state")
        done = {
            key: record["as_of"]
            for key, ts in last.items()
            if isinstance(record := state.get(f"s|{key}"), dict) and record["as_of"] >= ts - 0.01
        }
        if len(done) == len(last):
            return
        assert time.monotonic() < deadline, f"evaluator did not reach {last} in {timeout}s (got {done})"
        await asyncio.sleep(1.0)


def _of(transitions: list[dict[str, Any]], series: str, rule_id: str) -> list[tuple[str, str]]:
    return [
        (t["state"], t["as_of"]) for t in transitions if t["series_key"] == series and t["rule_id"] == rule_id
    ]


async def test_terra_chain_tvl_drop_fires_and_resolves_on_the_days_the_csv_says(
    topics: Settings, worker: WorkerProcess, data_dir: Path
) -> None:
    rule = stored_rule(
        name="Terra chain TVL drop",
        scope='chain == "Terra"',
        metric="tvl_usd",
        condition={"kind": "change", "window": "1d", "op": "<", "value": -20},
    )
    records = [r for r in records_of("chain-tvl", data_dir) if "2022-04-01" <= _day(r.ts) <= "2022-06-10"]
    transitions = await _run(worker, topics, [rule], records)

    # Independently: each day against the day before, straight from the file.
    tvl = chain_tvl(data_dir, "Terra")
    expected: list[tuple[str, str]] = []
    firing = False
    for day in sorted(d for d in tvl if "2022-04-02" <= d <= "2022-06-10"):
        before = tvl.get(_shift(day, -1))
        assert before, f"the CSV has no Terra value the day before {day}; the test assumes daily data"
        holds = (tvl[day] - before) / before * 100 < -20
        if holds != firing:
            expected.append(("firing" if holds else "resolved", f"{day}T00:00:00Z"))
            firing = holds
    assert expected[:2] == [("firing", "2022-05-09T00:00:00Z"), ("resolved", "2022-05-14T00:00:00Z")]
    assert _of(transitions, "chain||Terra", rule["id"]) == expected
    assert {t["series_key"] for t in transitions} == {"chain||Terra"}  # the scope: no other chain

    first = transitions[0]
    change = (tvl["2022-05-09"] / tvl["2022-05-08"] - 1) * 100
    assert first["previous_state"] == "normal" and first["value"] == pytest.approx(change, rel=1e-9)
    assert (
        first["threshold"] == -20
        and first["starts_at"] == "2022-05-09T00:00:00Z"
        and first["ends_at"] is None
    )
    assert first["labels"] == {
        "alertname": "Terra chain TVL drop",
        "severity": "critical",
        "kind": "chain",
        "chain": "Terra",
    }
    assert first["evidence"] == [
        ["2022-05-08T00:00:00Z", tvl["2022-05-08"]],
        ["2022-05-09T00:00:00Z", tvl["2022-05-09"]],
    ]
    resolved = transitions[1]
    assert resolved["starts_at"] == "2022-05-09T00:00:00Z" and resolved["ends_at"] == "2022-05-14T00:00:00Z"
    assert all(t["source"].split(":")[0].endswith("tvl.updates") for t in transitions)


def usdc_ticks(data_dir: Path) -> list[tuple[float, float]]:
    """The file's 15-minute bars as the ticks docs/topics.md says the replay makes of a bar: open at its
    start, the extremes at one and two thirds (the low first in a rising bar), close 1 ms before its end."""
    bars = json.loads((data_dir / "prices" / "usdc_15m_depeg_2023-03.json").read_bytes())["data"]
    ticks = []
    for bar in bars:
        start = datetime.fromisoformat(bar["dt"].replace("Z", "+00:00")).timestamp()
        first, second = (bar["l"], bar["h"]) if bar["c"] >= bar["o"] else (bar["h"], bar["l"])
        ticks += [(start, bar["o"]), (start + 300, first), (start + 600, second), (start + 899.999, bar["c"])]
    return sorted(ticks)


def below_for(
    ticks: list[tuple[float, float]], line: float, hold: float, keep: float
) -> list[tuple[str, float]]:
    """When "price < line for ``hold`` seconds" starts and stops firing, kept firing ``keep`` seconds
    after the price is back (plain Python over the ticks)."""
    events: list[tuple[str, float]] = []
    below_since: float | None = None
    back_since: float | None = None
    firing = False
    for ts, price in ticks:
        if price < line:
            back_since = None
            below_since = ts if below_since is None else below_since
            if not firing and ts - below_since >= hold:
                firing = True
                events.append(("firing", ts))
        else:
            below_since = None
            if firing:
                back_since = ts if back_since is None else back_since
                if ts - back_since >= keep:
                    firing, back_since = False, None
                    events.append(("resolved", ts))
    return events


async def test_usdc_below_098_for_30_minutes_fires_at_the_bar_the_file_says(
    topics: Settings, worker: WorkerProcess, data_dir: Path
) -> None:
    usdc = 'coin == "coingecko:usd-coin"'
    below = {"kind": "threshold", "op": "<", "value": 0.98}
    # As written, the rule flaps with the price around the line; keep_firing_for is the Prometheus answer.
    steady = stored_rule(
        name="USDC depeg",
        channel="prices",
        scope=usdc,
        metric="price",
        condition=below,
        keep_firing_for="1h",
        **{"for": "30m"},
    )
    plain = stored_rule(
        name="USDC depeg, no keep",
        channel="prices",
        scope=usdc,
        metric="price",
        condition=below,
        **{"for": "30m"},
    )
    records = list(records_of("usdc", data_dir))
    transitions = await _run(worker, topics, [steady, plain], records)

    ticks = usdc_ticks(data_dir)
    replayed = [(r.ts, r.value["price"]) for r in records]
    # The replay makes the ticks as documented (to the float rounding of 899.999).
    assert len(replayed) == len(ticks)
    assert all(abs(a - c) < 1e-6 and b == d for (a, b), (c, d) in zip(replayed, ticks, strict=True))

    def fired(rule: dict[str, Any]) -> list[tuple[str, str]]:
        return [
            (s, at)
            for s, at in _of(transitions, "coingecko:usd-coin", rule["id"])
            if s in ("firing", "resolved")
        ]

    def iso(ts: float) -> str:
        return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")

    expected = below_for(ticks, 0.98, 1800, 3600)
    assert [s for s, _ in expected] == ["firing", "resolved"]  # once
    assert fired(steady) == [(s, iso(ts)) for s, ts in expected]
    # The right bar: the 06:15 bar of 2023-03-11, 30 minutes after the price last came back under 0.98.
    assert fired(steady)[0] == ("firing", "2023-03-11T06:25:00Z")
    assert fired(plain) == [(s, iso(ts)) for s, ts in below_for(ticks, 0.98, 1800, 0)]
    assert [s for s, _ in fired(plain)].count("firing") == 4
    firing = next(t for t in transitions if t["rule_id"] == steady["id"] and t["state"] == "firing")
    assert firing["previous_state"] == "pending" and firing["value"] < 0.98 and firing["threshold"] == 0.98
    # Evidence: the 30 minutes the price spent below the line, then the firing tick.
    assert firing["evidence"][-1] == ["2023-03-11T06:25:00Z", firing["value"]]
    assert all(value < 0.98 for at, value in firing["evidence"] if at >= "2023-03-11T05:55:00Z")


async def test_missing_input_moves_to_no_data_and_never_alerts_a_minus_100_change(
    topics: Settings, worker: WorkerProcess, data_dir: Path
) -> None:
    # Polkadot's row stops after 2022-05-08; Thorchain's stops after 05-16 and comes back as 0 on 05-20.
    rule = stored_rule(
        name="chain TVL drop",
        scope='kind == "chain" and chain in ("Polkadot", "Thorchain")',
        metric="tvl_usd",
        condition={"kind": "change", "window": "1d", "op": "<", "value": -20},
        no_data_after="2d",
    )
    records = [r for r in records_of("chain-tvl", data_dir) if "2022-05-01" <= _day(r.ts) <= "2022-05-31"]
    transitions = await _run(worker, topics, [rule], records)

    for chain in ("Polkadot", "Thorchain"):
        tvl = chain_tvl(data_dir, chain)
        days = sorted(d for d in tvl if "2022-05-01" <= d <= "2022-05-31")
        gap_from = next(d for d in days if _shift(d, 1) not in tvl)  # last day before the input goes missing
        assert all((tvl[d] / tvl[_shift(d, -1)] - 1) * 100 >= -20 for d in days[1 : days.index(gap_from) + 1])
        # Two days of silence while the other chains go on: no data, and nothing else ever.
        assert _of(transitions, f"chain||{chain}", rule["id"]) == [
            ("no_data", f"{_shift(gap_from, 2)}T00:00:00Z")
        ]
    assert chain_tvl(data_dir, "Thorchain")["2022-05-20"] == 0  # a naive change would say -100% here
    assert not [t for t in transitions if t["state"] == "firing" or t["value"] == -100]
    aged = transitions[0]
    assert aged["previous_state"] == "normal" and aged["value"] is None and aged["starts_at"] is None


async def test_a_worker_killed_mid_replay_loses_no_transition_and_repeats_none_under_a_new_key(
    topics: Settings, worker: WorkerProcess, data_dir: Path
) -> None:
    rule = stored_rule(
        name="any chain drops",
        scope='kind == "chain"',
        metric="tvl_usd",
        condition={"kind": "change", "window": "1d", "op": "<", "value": -25},
    )
    records = [r for r in records_of("chain-tvl", data_dir) if "2022-04-01" <= _day(r.ts) <= "2022-07-31"]
    await publish_rules(topics, {rule["id"]: rule})
    worker.start()
    await worker.wait_ready()
    await send_records(topics, records)
    # Kill it once a part of the transitions is out, mid-stream.
    await read_topic(topics, "alerts.triggered", until=lambda ms: len(ms) >= 40, timeout=240)
    worker.kill()
    before_kill = {
        (m.json()["fingerprint"], m.json()["source"]) for m in await read_all(topics, "alerts.triggered")
    }
    worker.start()
    await worker.wait_ready()
    last: dict[str, float] = {}
    for record in records:
        last[_series_of(record)] = max(last.get(_series_of(record), record.ts), record.ts)
    await _wait_evaluated(topics, last)
    transitions = [m.json() for m in await read_all(topics, "alerts.triggered")]

    # The same rule over the same rows in one process, uninterrupted.
    rows = [
        (
            _series_of(r),
            {
                "kind": "chain",
                "protocol": None,
                "chain": r.value["chain"],
                "tvl_usd": r.value["tvl_usd"],
                "as_of": datetime.fromtimestamp(r.ts, UTC).isoformat().replace("+00:00", "Z"),
                "stale": False,
            },
        )
        for r in records
    ]
    expected = {(t["fingerprint"], t["state"], t["as_of"]) for t in backtest(Rule.model_validate(rule), rows)}
    assert len(expected) > 40
    seen = {(t["fingerprint"], t["state"], t["as_of"]) for t in transitions}
    assert seen == expected  # nothing lost, nothing invented
    by_key: dict[tuple[str, str], set[tuple[str, str]]] = {}
    for t in transitions:
        by_key.setdefault((t["fingerprint"], t["source"]), set()).add((t["state"], t["as_of"]))
    assert all(len(states) == 1 for states in by_key.values())  # a repeat is the same transition
    assert len(by_key) == len(expected)  # and every repeat carries the idempotency key of the first
    assert len(before_kill) < len(expected)  # the kill did land mid-stream
