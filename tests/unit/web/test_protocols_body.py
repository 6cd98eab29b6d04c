"""/protocols from per-protocol fragments gives byte for byte what building the whole list gives, through
updates, new and removed chains and protocols, and recategorisations."""

from __future__ import annotations

import random
from typing import Any

import orjson

from web.defillama import protocols_list
from web.protocols_body import ProtocolsBody

CHAINS = ["Ethereum", "Arbitrum", "Base", "Solana"]


def row(protocol: str, chain: str | None, tvl: float, category: str | None = None) -> dict[str, Any]:
    out = {"kind": "protocol", "protocol": protocol, "chain": chain, "tvl_usd": tvl,
           "change_1d_pct": round(tvl % 7 - 3, 2), "as_of": "2026-11-21T16:00:00Z"}  # fmt: skip
    if category is not None:
        out["category"] = category
    return out


def test_fragments_give_the_whole_list_byte_for_byte_through_random_changes() -> None:
    rng = random.Random(7)
    rows: dict[str, dict[str, Any]] = {}
    meta: dict[str, dict[str, Any]] = {}
    for n in range(60):
        name = f"P{n}"
        meta[name] = {"slug": "", "category": rng.choice(["Dexes", "Lending"]), "chains": CHAINS[:2]}
        rows[f"{name}|"] = row(name, None, rng.uniform(1, 1e9))
        for chain in rng.sample(CHAINS, 2):
            rows[f"{name}|{chain}"] = row(name, chain, rng.uniform(1, 1e8))
    rows["chain|Ethereum"] = {"kind": "chain", "protocol": None, "chain": "Ethereum", "tvl_usd": 5e10}
    body = ProtocolsBody()
    for _ in range(200):
        for _ in range(rng.randint(1, 15)):
            name = f"P{rng.randrange(70)}"  # P60-P69 appear over time
            action = rng.random()
            if action < 0.6:  # an update: a new row object
                chain = rng.choice([None, *CHAINS])
                rows[f"{name}|{chain or ''}"] = row(name, chain, rng.uniform(1, 1e9))
            elif action < 0.75:  # a chain row goes away
                rows.pop(f"{name}|{rng.choice(CHAINS)}", None)
            elif action < 0.85:  # a protocol's total goes away: it leaves the list
                rows.pop(f"{name}|", None)
            else:  # recategorised: new metadata, and the held rows patched in place (web/replica.py)
                category = rng.choice(["Dexes", "Lending", "CDP"])
                meta[name] = {**meta.get(name, {}), "category": category}
                for held in rows.values():
                    if held.get("protocol") == name:
                        held["category"] = category
        assert body.build(rows.values(), meta) == orjson.dumps(protocols_list(rows.values(), meta))


def test_an_unchanged_protocol_is_not_serialised_again() -> None:
    rows = {"a": row("A", None, 2.0), "b": row("B", None, 1.0)}
    body = ProtocolsBody()
    body.build(rows.values(), {})
    kept = body._fragments["B"]
    rows["a"] = row("A", None, 0.5)
    assert body.build(rows.values(), {}).index(b'"name":"B"') < body.build(rows.values(), {}).index(b'"A"')
    assert body._fragments["B"] is kept and body._fragments["A"] is not kept
