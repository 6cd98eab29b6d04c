"""DeFiLlama-compatible shapes built from rows made of the real DeFiLlama and exchange exports."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from web import defillama
from web.errors import ApiError
from web.rest import ChainList, PoolsResponse, PricesResponse, ProtocolDetail, ProtocolList

# chainTvls keys of DeFiLlama's exports that are accounting buckets, not chains.
BUCKETS = ("borrowed", "staking", "pool2", "vesting", "doublecounted", "liquidstaking")


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def tvl_row(protocol: str | None, chain: str | None, tvl: float, as_of: str, **extra: Any) -> dict[str, Any]:
    kind = "chain" if protocol is None else "protocol"
    return {
        "kind": kind, "protocol": protocol, "chain": chain, "tvl_usd": tvl, "change_1h_pct": None,
        "change_1d_pct": None, "change_7d_pct": None, "as_of": as_of, "stale": False, "source": "test",
        **extra,
    }  # fmt: skip


def is_chain(key: str) -> bool:
    return key.lower() not in BUCKETS and key.rsplit("-", 1)[-1].lower() not in BUCKETS


@pytest.fixture(scope="module")
def metadata(data_dir: Path) -> dict[str, dict[str, Any]]:
    entries = json.loads((data_dir / "defillama" / "protocols_2025-12-08.json").read_bytes())
    return {entry["name"]: entry for entry in entries}


@pytest.fixture(scope="module")
def histories(data_dir: Path) -> dict[str, dict[str, Any]]:
    """Per-protocol exports by file stem (lowercase stems are DeFiLlama slugs)."""
    return {
        p.stem: json.loads(p.read_bytes())
        for p in sorted((data_dir / "defillama" / "protocol_tvl").glob("*.json"))
    }


def protocol_rows(histories: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """A total row per protocol (its last point) and a row per real chain of its currentChainTvls."""
    rows = []
    for document in histories.values():
        last = document["tvl"][-1]
        as_of = iso(last["date"])
        rows.append(tvl_row(document["name"], None, float(last["totalLiquidityUSD"]), as_of))
        for chain, value in document["currentChainTvls"].items():
            if is_chain(chain):
                rows.append(tvl_row(document["name"], chain, float(value), as_of))
    return rows


def test_slugs_are_derived_as_defillama_derives_them(histories: dict[str, dict[str, Any]]) -> None:
    slugged = {stem: doc["name"] for stem, doc in histories.items() if stem == stem.lower()}
    assert len(slugged) >= 25
    for stem, name in slugged.items():
        assert defillama.slugify(name) == stem
        # The 2025 export's slugs are empty: the derived one is used.
        assert defillama.protocol_slug(name, {"slug": ""}) == stem
    assert defillama.protocol_slug("Aave V3", {"slug": "aave-v3"}) == "aave-v3"


def test_protocols_list(histories: dict[str, dict[str, Any]], metadata: dict[str, dict[str, Any]]) -> None:
    body = defillama.protocols_list(protocol_rows(histories), metadata)
    ProtocolList.model_validate(body)
    assert len(body) == len(histories)
    expected_order = sorted(
        (-float(d["tvl"][-1]["totalLiquidityUSD"]), d["name"]) for d in histories.values()
    )
    assert [p["name"] for p in body] == [name for _, name in expected_order]
    assert body[0]["name"] == "Kamino Lend" and body[0]["tvl"] == 2246279745

    echelon = next(p for p in body if p["name"] == "Echelon Market")
    assert echelon["slug"] == "echelon-market"
    assert echelon["category"] == metadata["Echelon Market"]["category"] == "Lending"
    assert echelon["chainTvls"] == {
        "Aptos": 96082501.32077,
        "Echelon Chain": 1150506.18617,
        "Move": 5014363.03285,
    }
    # Chains with a TVL first (largest first), then the metadata's others in its order.
    assert echelon["chains"] == ["Aptos", "Move", "Echelon Chain", "Movement", "Echelon Initia"]
    assert echelon["as_of"] == iso(histories["echelon-market"]["tvl"][-1]["date"])
    assert echelon["change_1d"] is None and echelon["stale"] is False

    # Not in the 2025-12-08 metadata: no category invented, slug derived.
    drift = next(p for p in body if p["name"] == "Drift")
    assert "Drift" not in metadata
    assert (drift["category"], drift["slug"], drift["url"]) == (None, "drift", None)


def test_protocol_without_total_is_not_listed_and_row_category_is_a_fallback() -> None:
    rows = [
        tvl_row("Aave V3", "Ethereum", 1.0, "2025-12-08T00:00:00Z"),
        tvl_row("Kamino Lend", None, 2.0, "2025-12-08T00:00:00Z", category="Lending", change_1d_pct=-3.5),
    ]
    body = defillama.protocols_list(rows, {})
    assert [(p["name"], p["category"], p["change_1d"]) for p in body] == [("Kamino Lend", "Lending", -3.5)]


def test_history_points_follow_the_views_current_row(histories: dict[str, dict[str, Any]]) -> None:
    points = sorted(histories["nirvana-v1"]["tvl"], key=lambda p: p["date"])
    buckets = [(datetime.fromtimestamp(p["date"], UTC), float(p["totalLiquidityUSD"])) for p in points]
    # The exploit day (2022-07-29, -100%) seen by a view whose newest row is that day's, at 15:00.
    day = int(datetime(2022, 7, 29, tzinfo=UTC).timestamp())
    current = tvl_row("Nirvana V1", None, 1234.0, iso(day + 15 * 3600))
    shaped = defillama.history_points(buckets, current)
    before = [p for p in points if p["date"] < day]
    assert shaped[:-1] == [
        {"date": p["date"], "totalLiquidityUSD": float(p["totalLiquidityUSD"])} for p in before
    ]
    assert shaped[-1] == {"date": day, "totalLiquidityUSD": 1234.0}
    assert shaped[-2]["totalLiquidityUSD"] > 1_000_000  # the day before the exploit
    assert defillama.history_points(buckets, None) == []


def test_protocol_detail(histories: dict[str, dict[str, Any]], metadata: dict[str, dict[str, Any]]) -> None:
    grouped = defillama.group_protocols(protocol_rows(histories))
    assert defillama.find_protocol("SAVE", grouped, metadata) == "Save"
    assert defillama.find_protocol("no-such-protocol", grouped, metadata) is None
    document = histories["save"]
    total = [(datetime.fromtimestamp(p["date"], UTC), float(p["totalLiquidityUSD"])) for p in document["tvl"]]
    body = defillama.protocol_detail("Save", grouped["Save"], metadata.get("Save"), {None: total[:-1]})
    ProtocolDetail.model_validate(body)
    assert body["currentChainTvls"] == {"Solana": 123818024.69905, "Eclipse": 403450.98679}
    assert body["chains"] == ["Solana", "Eclipse"]
    # The export's last point is "now"; the view's row replaces that day's stored bucket.
    last = document["tvl"][-1]
    today = last["date"] - last["date"] % 86400
    earlier = [p for p in document["tvl"][:-1] if p["date"] < today]
    assert body["tvl"] == [
        *({"date": p["date"], "totalLiquidityUSD": float(p["totalLiquidityUSD"])} for p in earlier),
        {"date": today, "totalLiquidityUSD": float(last["totalLiquidityUSD"])},
    ]
    assert len(body["tvl"]) > 1500
    # No stored history of the per-chain series yet: only the view's current value.
    assert body["chainTvls"]["Eclipse"]["tvl"] == [body["tvl"][-1] | {"totalLiquidityUSD": 403450.98679}]


def test_chains_list(data_dir: Path) -> None:
    with (data_dir / "defillama" / "chain_tvl_daily_2018-2023.csv").open(newline="") as handle:
        day = next(r for r in csv.DictReader(handle) if r["date"].startswith("2022-05-09"))
    values = {chain: float(cell) for chain, cell in day.items() if chain != "date" and cell}
    rows = [tvl_row(None, chain, tvl, "2022-05-09T00:00:00Z") for chain, tvl in values.items()]
    rows.append(tvl_row("Aave V3", "Ethereum", 1.0, "2022-05-09T00:00:00Z"))  # not a chain row
    body = defillama.chains_list(rows)
    ChainList.model_validate(body)
    assert len(body) == len(values) == 102
    assert [c["name"] for c in body[:2]] == ["Ethereum", "Terra"]
    assert {c["name"]: c["tvl"] for c in body} == values
    assert body[1]["tvl"] == pytest.approx(13.1e9, rel=1e-3)
    assert all(c["gecko_id"] is None and c["chainId"] is None for c in body)


def test_prices_current(data_dir: Path) -> None:
    bars = json.loads((data_dir / "prices" / "usdc_15m_depeg_2023-03.json").read_bytes())["data"]
    bar = next(b for b in bars if b["dt"] == "2023-03-11T08:30:00.000Z")
    as_of = "2023-03-11T08:44:59.999000Z"
    rows = {"coingecko:usd-coin": {
        "coin": "coingecko:usd-coin", "symbol": "USDC", "price": bar["c"], "change_5m_pct": None,
        "change_1h_pct": None, "change_24h_pct": None, "confidence": 0.99, "as_of": as_of, "stale": False,
    }}  # fmt: skip
    ids = defillama.parse_coins("coingecko:usd-coin,coingecko:dai,coingecko:usd-coin")
    assert ids == ["coingecko:usd-coin", "coingecko:dai"]
    body = defillama.prices_current(ids, rows)
    PricesResponse.model_validate(body)
    expected_ts = int(datetime(2023, 3, 11, 8, 44, 59, tzinfo=UTC).timestamp())
    assert body == {
        "coins": {"coingecko:usd-coin": {
            "price": bar["c"], "symbol": "USDC", "timestamp": expected_ts, "confidence": 0.99,
            "as_of": as_of, "stale": False,
        }},
        "unknown": ["coingecko:dai"],
    }  # fmt: skip
    assert bar["l"] < 0.9  # the depeg bar


@pytest.mark.parametrize("text", ["coingecko:usd-coin,usdc", "coingecko:usd-coin,", "ETHEREUM:0xa0b8"])
def test_malformed_coin_is_named(text: str) -> None:
    with pytest.raises(ApiError) as caught:
        defillama.parse_coins(text)
    assert caught.value.status == 400 and caught.value.code == "invalid_coin"
    bad = text.split(",")[-1]
    assert repr(bad) in json.loads(caught.value.text or "")["error"]["message"]


def test_too_many_coins() -> None:
    ids = ",".join(f"coingecko:coin-{i}" for i in range(defillama.MAX_COINS + 1))
    with pytest.raises(ApiError) as caught:
        defillama.parse_coins(ids)
    assert caught.value.code == "too_many_coins" and "101" in (caught.value.text or "")
    assert len(defillama.parse_coins(ids.rsplit(",", 1)[0])) == defillama.MAX_COINS


def test_pools_list(data_dir: Path) -> None:
    """DeFiLlama's own apyPct1D/7D (the export's apy_pct_*) come back under DeFiLlama's names."""

    def number(cell: str) -> float | None:
        return float(cell) if cell else None

    with (data_dir / "yields" / "pools_full_fields_2025-10.csv").open(newline="") as handle:
        records = list(csv.DictReader(handle))[:200]
    rows = [
        {
            "pool": r["pool"], "chain": r["chain"], "project": r["protocol_slug"], "symbol": r["symbol"],
            "tvl_usd": float(r["tvl_usd"]), "apy": number(r["apy"]), "apy_base": number(r["apy_base"]),
            "apy_reward": number(r["apy_reward"]), "apy_change_1d": number(r["apy_pct_1d"]),
            "apy_change_7d": number(r["apy_pct_7d"]), "tvl_change_1d_pct": None,
            "as_of": r["timestamp"].replace(".000Z", "Z"), "stale": False, "source": "test",
        }
        for r in records
    ]  # fmt: skip
    body = defillama.pools_list(rows)
    PoolsResponse.model_validate(body)
    assert body["status"] == "success" and len(body["data"]) == 200
    assert [p["tvlUsd"] for p in body["data"]] == sorted((float(r["tvl_usd"]) for r in records), reverse=True)
    first = next(p for p in body["data"] if p["pool"] == "bc33d1ea-f566-40eb-b0a8-8d8dcf425f18")
    assert first == {
        "pool": "bc33d1ea-f566-40eb-b0a8-8d8dcf425f18", "chain": "Base", "project": "aerodrome-slipstream",
        "symbol": "WETH-OETHB", "tvlUsd": 815672271.0, "apy": 0.07324, "apyBase": 0.00008,
        "apyReward": 0.07316, "apyPct1D": 0.00124, "apyPct7D": None, "as_of": first["as_of"], "stale": False,
    }  # fmt: skip
