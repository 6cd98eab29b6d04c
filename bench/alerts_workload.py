"""The alert benchmark's workload: real protocols and chains, synthetic rules over them, TVL events.

The universe is DeFiLlama's protocol export (../shared/data/defillama/protocols_2025-12-19.json): the
3,000 protocols with the most TVL and the 100 chains they are most often on, with their real categories.
Rules mix what users write (per protocol, per protocol and chain, per chain, per category, a few with no
identity term at all); events are TVL rows of every (protocol, chain) pair and chain, one event-time hour
apart per series, random walks with occasional drops that make rules fire and then resolve.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.alerting.rules import Rule
from pipeline.records import iso

__all__ = ["Protocol", "Universe", "load_universe", "make_rules", "EventClock", "Event"]

HOUR = 3600.0
START = datetime(2025, 1, 1, tzinfo=UTC).timestamp()
CREATED = datetime(2025, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Protocol:
    name: str
    category: str | None
    chains: tuple[str, ...]


@dataclass(frozen=True)
class Universe:
    protocols: list[Protocol]
    chains: list[str]

    @property
    def series(self) -> list[tuple[str | None, str]]:
        """(protocol or None for the chain row, chain) of every TVL series."""
        pairs: list[tuple[str | None, str]] = [(p.name, c) for p in self.protocols for c in p.chains]
        return pairs + [(None, c) for c in self.chains]


def load_universe(data: Path, protocols: int = 3000, chains: int = 100) -> Universe:
    entries = json.loads((data / "defillama" / "protocols_2025-12-19.json").read_bytes())
    entries = [e for e in entries if e.get("chains") and isinstance(e.get("tvl"), int | float) and e["name"]]
    entries.sort(key=lambda e: -float(e["tvl"]))
    counts: dict[str, int] = {}
    for entry in entries[:protocols]:
        for chain in entry["chains"]:
            counts[chain] = counts.get(chain, 0) + 1
    top = sorted(counts, key=lambda c: -counts[c])[:chains]
    kept = set(top)
    chosen: list[Protocol] = []
    names: set[str] = set()
    for entry in entries:
        on = tuple(c for c in entry["chains"] if c in kept)
        if on and entry["name"] not in names:
            names.add(entry["name"])
            chosen.append(Protocol(entry["name"], entry.get("category") or None, on))
        if len(chosen) == protocols:
            break
    return Universe(chosen, top)


def _condition(rng: random.Random) -> dict[str, Any]:
    roll = rng.random()
    if roll < 0.35:
        return {
            "kind": "change",
            "window": rng.choice(["1h", "6h"]),
            "op": "<",
            "value": -rng.choice([10, 20, 30]),
        }
    if roll < 0.55:
        return {"kind": "change", "window": "1d", "op": "<", "value": -rng.choice([20, 30, 50])}
    if roll < 0.9:
        return {"kind": "threshold", "op": "<", "value": rng.choice([1.0, 1e3, 1e5])}
    if roll < 0.95:
        return {"kind": "crosses", "direction": "below", "value": 1.0}
    return {"kind": "anomaly", "window": "1d", "z": 4.0, "direction": "below"}


def _rule(n: int, scope: str, condition: dict[str, Any], metric: str = "tvl_usd", **spec: Any) -> Rule:
    body = {
        "id": f"rule-{n:06d}",
        "owner": f"owner-{n % 1000:03d}",
        "name": f"rule {n}",
        "channel": "tvl",
        "scope": scope,
        "metric": metric,
        "condition": condition,
        "severity": "warning",
        "created_at": CREATED,
        "updated_at": CREATED,
    }
    return Rule.model_validate(body | spec)


def _q(text: str) -> str:
    return json.dumps(text)


ALL_KINDS = ("protocol", "protocol+chain", "chain row", "category", "chain")
MIX = (0.55, 0.30, 0.10, 0.04, 0.01)


def make_rules(
    universe: Universe,
    count: int,
    *,
    seed: int = 7,
    protocols: list[Protocol] | None = None,
    kinds: tuple[str, ...] = ALL_KINDS,
    first: int = 0,
) -> list[Rule]:
    """``count`` rules (ids from ``first``) mixed as users write them: 55% on one protocol, 30% on one
    protocol on one chain, 10% on a chain's own row, 4% on a category's protocols, 1% on everything on a
    chain (``kinds`` keeps some of these). The first rule of each protocol is a probe (TVL below 1, which
    the workload's drops reach) so every drop fires something. ``protocols``: only these."""
    rng = random.Random(seed)
    pool = protocols if protocols is not None else universe.protocols
    categories = sorted({p.category for p in universe.protocols if p.category})
    weights = [w for kind, w in zip(ALL_KINDS, MIX, strict=True) if kind in kinds]
    chosen_kinds = [k for k in ALL_KINDS if k in kinds]
    rules: list[Rule] = []
    for n in range(first, first + count):
        index = n - first
        if index < len(pool) and "protocol" in kinds:
            probe = {"kind": "threshold", "op": "<", "value": 1.0}
            rules.append(_rule(n, f"protocol == {_q(pool[index].name)}", probe))
            continue
        kind = rng.choices(chosen_kinds, weights)[0]
        protocol = rng.choice(pool)
        if kind == "protocol":
            scope = f"protocol == {_q(protocol.name)}"
            rules.append(_rule(n, scope, _condition(rng), **{"for": rng.choice(["0s", "0s", "1h"])}))
        elif kind == "protocol+chain":
            scope = f"protocol == {_q(protocol.name)} and chain == {_q(rng.choice(protocol.chains))}"
            rules.append(_rule(n, scope, _condition(rng), keep_firing_for=rng.choice(["0s", "1h"])))
        elif kind == "chain row":
            scope = f'kind == "chain" and chain == {_q(rng.choice(universe.chains))}'
            rules.append(_rule(n, scope, _condition(rng), no_data_after="2d"))
        elif kind == "category":
            scope = f"category == {_q(rng.choice(categories))}"
            rules.append(
                _rule(n, scope, {"kind": "threshold", "op": "<", "value": -50}, metric="change_1h_pct")
            )
        else:
            scope = f"chain == {_q(rng.choice(universe.chains))} and tvl_usd > 1000000"
            rules.append(_rule(n, scope, {"kind": "change", "window": "1h", "op": "<", "value": -40}))
    return rules


@dataclass(frozen=True, slots=True)
class Event:
    raw_key: str  # raw.tvl key: protocol name or "chain|<chain>"
    series: str  # tvl.updates key
    ts: float
    raw: dict[str, Any]  # the raw.tvl value
    row: dict[str, Any]  # the tvl.updates row the aggregation makes of it (changes left out)


class EventClock:
    """Round-robin over the series, each one event-time hour apart; every ``drop_every``-th event of a
    protocol series drops its TVL below 1 (probe rules fire) and its next event restores it."""

    def __init__(
        self, universe: Universe, seed: int = 11, drop_every: int = 20, series: list[Any] | None = None
    ):
        self.rng = random.Random(seed)
        self.series = list(series if series is not None else universe.series)
        self.rng.shuffle(self.series)
        self.step = HOUR / len(self.series)
        self.values = {s: 1e6 * (1 + self.rng.random() * 100) for s in self.series}
        self.dropped: set[Any] = set()
        self.drop_every = drop_every
        self.count = 0

    def events(self, count: int) -> Iterator[Event]:
        for _ in range(count):
            protocol, chain = key = self.series[self.count % len(self.series)]
            ts = START + self.count * self.step
            self.count += 1
            if key in self.dropped:
                self.dropped.discard(key)
                value = self.values[key]
            elif protocol is not None and self.rng.randrange(self.drop_every) == 0:
                self.dropped.add(key)
                value = 0.5
            else:
                value = self.values[key] = self.values[key] * (1 + self.rng.gauss(0, 0.01))
            raw = {"protocol": protocol, "chain": chain, "tvl_usd": value, "ts": ts, "source": "bench"}
            kind = "chain" if protocol is None else "protocol"
            row = {
                "kind": kind,
                "protocol": protocol,
                "chain": chain,
                "tvl_usd": value,
                "change_1h_pct": None,
                "change_1d_pct": None,
                "change_7d_pct": None,
                "as_of": iso(ts),
                "stale": False,
                "source": "bench",
            }
            raw_key = protocol if protocol is not None else f"chain|{chain}"
            yield Event(raw_key, f"{kind}|{protocol or ''}|{chain}", ts, raw, row)
