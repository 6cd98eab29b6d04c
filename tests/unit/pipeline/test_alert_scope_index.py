"""The scope index and the rule book: a row meets only the rules that can match it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

from pipeline.alerting.rule_book import RuleBook
from pipeline.alerting.rules import Rule
from pipeline.filters import equality_terms
from pipeline.scope_index import ScopeIndex

NOW = datetime(2024, 1, 1, tzinfo=UTC)


def rule(rule_id: str, scope: str, channel: str = "tvl", **spec: Any) -> Rule:
    metric = {"tvl": "tvl_usd", "prices": "price", "yields": "apy"}[channel]
    return Rule.model_validate(
        {
            "id": rule_id,
            "owner": "o",
            "name": rule_id,
            "channel": channel,
            "scope": scope,
            "metric": metric,
            "condition": {"kind": "threshold", "op": "<", "value": 1},
            "created_at": NOW,
            "updated_at": NOW,
            **spec,
        }
    )


def test_equality_terms_reads_top_level_conjuncts_only() -> None:
    assert equality_terms('chain == "A" and (kind == "chain" and tvl_usd > 5)') == {
        "chain": frozenset({"A"}),
        "kind": frozenset({"chain"}),
    }
    assert equality_terms('chain == "A" or chain in ("B", "C")') == {"chain": frozenset({"A", "B", "C"})}
    assert equality_terms('chain == "A" or protocol == "B"') == {}
    assert equality_terms('not chain == "A"') == {} and equality_terms('chain != "A"') == {}
    assert equality_terms(None) == {} and equality_terms("  ") == {}


def test_a_rule_is_filed_under_all_the_fields_it_pins_and_found_only_by_matching_rows() -> None:
    index: ScopeIndex[str] = ScopeIndex(("protocol", "chain", "category", "kind"))
    index.add("r1", 'chain == "Ethereum" and protocol == "Aave"', "r1")
    index.add("r2", 'chain in ("Ethereum", "Arbitrum")', "r2")
    index.add("r3", "tvl_usd > 1000", "r3")
    index.add("r4", 'kind == "chain" and chain == "Ethereum"', "r4")
    assert set(index.shapes) == {("protocol", "chain"), ("chain",), ("chain", "kind")}
    aave = {"kind": "protocol", "protocol": "Aave", "chain": "Ethereum"}
    assert sorted(index.candidates(aave)) == ["r1", "r2", "r3"]  # not r4: it is about the chain row
    assert sorted(index.candidates({"kind": "chain", "protocol": None, "chain": "Ethereum"})) == [
        "r2",
        "r3",
        "r4",
    ]
    assert sorted(index.candidates({"protocol": "Uniswap", "chain": "Arbitrum"})) == ["r2", "r3"]
    assert index.candidates({"protocol": None, "chain": "Solana"}) == ["r3"]
    for entry in ("r2", "r3", "r4", "missing"):
        index.remove(entry)
    assert index.candidates({"protocol": "Uniswap", "chain": "Arbitrum"}) == [] and len(index) == 1
    assert set(index.shapes) == {("protocol", "chain")}


def test_a_rule_with_too_many_combinations_drops_its_least_selective_fields() -> None:
    index: ScopeIndex[str] = ScopeIndex(("protocol", "chain"))
    protocols = ", ".join(f'"p{n}"' for n in range(20))
    chains = ", ".join(f'"c{n}"' for n in range(20))
    index.add("wide", f"protocol in ({protocols}) and chain in ({chains})", "wide")
    assert set(index.shapes) == {("protocol",)} and index.candidates({"protocol": "p3", "chain": "x"}) == [
        "wide"
    ]


def test_candidates_do_not_grow_with_rules_about_other_series() -> None:
    book = RuleBook()
    for n in range(3000):
        book.put(rule(f"p{n}", f'protocol == "proto-{n}"'))
    for n in range(100):
        book.put(rule(f"c{n}", f'kind == "chain" and chain == "chain-{n}"'))
    row = {"kind": "protocol", "protocol": "proto-7", "chain": "chain-3", "tvl_usd": 0.5}
    assert [r.id for r in book.indexes["tvl"].candidates(row)] == ["p7"]
    chain_row = {"kind": "chain", "protocol": None, "chain": "chain-3", "tvl_usd": 0.5}
    assert [r.id for r in book.match("tvl", chain_row)] == ["c3"]


def test_the_book_applies_records_and_tombstones_and_keeps_disabled_rules_out_of_the_index() -> None:
    book = RuleBook()
    r = rule("r1", 'coin == "coingecko:usd-coin"', channel="prices")
    book.apply(b"r1", orjson.dumps(r.model_dump(mode="json", by_alias=True)))
    row = {"coin": "coingecko:usd-coin", "price": 0.9}
    assert [c.id for c in book.match("prices", row)] == ["r1"] and book.match("tvl", row) == []
    generation = book.generation
    disabled = r.model_copy(update={"enabled": False, "version": 2})
    book.apply(b"r1", orjson.dumps(disabled.model_dump(mode="json", by_alias=True)))
    assert book.match("prices", row) == [] and book.covers("r1", "prices", row) is None
    assert "r1" in book.rules and book.generation > generation
    book.apply(b"r1", None)
    assert "r1" not in book.rules and book.retired["r1"].rule.version == 2


def test_the_book_skips_invalid_records_and_keeps_the_previous_version() -> None:
    book = RuleBook()
    book.put(rule("r1", 'chain == "A"'))
    book.apply(b"r1", b'{"not": "a rule"}')
    book.apply(b"r2", orjson.dumps(rule("r1", 'chain == "B"').model_dump(mode="json", by_alias=True)))
    assert book.rejected == 2 and book.rules["r1"].rule.scope == 'chain == "A"' and "r2" not in book.rules


def test_definition_changes_only_with_what_is_evaluated() -> None:
    book = RuleBook()
    book.put(rule("r1", 'chain == "A"'))
    before = book.rules["r1"].definition
    book.put(rule("r1", 'chain == "A"', labels={"team": "x"}, severity="critical", version=2))
    assert book.rules["r1"].definition == before
    book.put(rule("r1", 'chain == "A"', **{"for": "5m"}, version=3))
    assert book.rules["r1"].definition != before
