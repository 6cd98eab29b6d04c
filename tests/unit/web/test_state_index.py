"""The replica view's index on identity fields: snapshots read only the rows a filter can match, and
always the same rows a full scan finds."""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest

from pipeline.channels import CHANNELS
from pipeline.filters import compile_filter
from web.state import ChannelState, Update

FILTERS = [
    'protocol == "Aave"',
    'protocol in ("Aave", "Lido") and tvl_usd > 50',
    'chain == "Ethereum" and kind == "protocol_chain"',
    'category == "Dexes" or category == "Lending"',
    'protocol == "Aave" or chain == "Solana"',  # no field pinned by every branch: a full scan
    "tvl_usd > 500",
    'protocol == "Nobody"',
]


def row(protocol: str, chain: str, category: str | None, tvl: float) -> dict[str, Any]:
    kind = "protocol" if chain == "total" else "protocol_chain"
    return {"protocol": protocol, "chain": chain, "category": category, "kind": kind, "tvl_usd": tvl}


def full_scan(state: ChannelState, text: str) -> list[tuple[str, dict[str, Any]]]:
    predicate = compile_filter(text, CHANNELS["tvl"].fields)
    return sorted((k, r) for k, r in state.rows.items() if predicate(r))


def indexed(state: ChannelState, text: str) -> list[tuple[str, dict[str, Any]]]:
    return sorted(state.matching(compile_filter(text, CHANNELS["tvl"].fields)))


def test_matching_equals_a_full_scan_through_inserts_changes_and_deletes() -> None:
    rng = random.Random(7)
    state = ChannelState(CHANNELS["tvl"])
    protocols, chains = ["Aave", "Lido", "Uniswap", "Curve"], ["total", "Ethereum", "Solana"]
    categories = ["Lending", "Dexes", "Liquid Staking", None]
    keys = [f"{p}:{c}" for p, c in itertools.product(protocols, chains)]
    for offset in range(2000):
        key = rng.choice(keys)
        protocol, chain = key.split(":")
        # Sometimes a delete, sometimes a row whose category (an indexed field) changes.
        value = (
            None if rng.random() < 0.1 else row(protocol, chain, rng.choice(categories), rng.random() * 1000)
        )
        state.apply(Update("tvl", key, value, 0, offset, 0))
        if offset % 250 == 0:
            for text in FILTERS:
                assert indexed(state, text) == full_scan(state, text), text


def test_a_field_changed_in_place_moves_the_row_in_the_index() -> None:
    state = ChannelState(CHANNELS["tvl"])
    state.apply(Update("tvl", "Aave:total", row("Aave", "total", "Lending", 10), 0, 0, 0))
    state.set_field("Aave:total", "category", "CDP")
    assert indexed(state, 'category == "Lending"') == []
    assert [k for k, _ in indexed(state, 'category == "CDP"')] == ["Aave:total"]


@pytest.mark.parametrize("odd", [["a", "list"], {"a": 1}])
def test_unhashable_values_are_left_out_of_the_index_but_not_of_scans(odd: Any) -> None:
    state = ChannelState(CHANNELS["tvl"])
    state.apply(Update("tvl", "x", row("Aave", "total", "Lending", 1) | {"chain": odd}, 0, 0, 0))
    assert [k for k, _ in indexed(state, 'protocol == "Aave"')] == ["x"]


def test_selective_filters_read_the_index_and_broad_ones_scan() -> None:
    state = ChannelState(CHANNELS["tvl"])
    for n, protocol in enumerate(["Aave", "Lido", "Uniswap", "Curve"] * 5):
        state.apply(Update("tvl", f"{protocol}:{n}", row(protocol, "total", "Dexes", n), 0, n, 0))
    tvl = CHANNELS["tvl"].fields
    found = state.candidate_keys(compile_filter('protocol == "Aave"', tvl))
    assert found is not None and sorted(found[0]) == [f"Aave:{n}" for n in (0, 12, 16, 4, 8)] and found[1]
    narrowed = state.candidate_keys(compile_filter('protocol == "Aave" and tvl_usd > 5', tvl))
    assert narrowed is not None and len(narrowed[0]) == 5
    assert narrowed[1] is False  # the other term is still tested per row
    assert state.candidate_keys(compile_filter('kind == "protocol"', tvl)) is None  # every row: a scan
    rows = state.matching_rows(compile_filter('protocol == "Aave" and tvl_usd > 5', tvl))
    assert sorted(r["tvl_usd"] for r in rows) == [8, 12, 16]
