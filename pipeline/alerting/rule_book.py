"""The rules an evaluator knows, compiled once and indexed by scope; fed from ``alerts.rules``."""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError

from pipeline.alerting.conditions import describe
from pipeline.alerting.instance import Timing
from pipeline.alerting.rules import Rule
from pipeline.alerting.trailing import Need, evidence_span, need_of
from pipeline.channels import CHANNELS
from pipeline.filters import Filter, compile_filter
from pipeline.scope_index import INDEXED_FIELDS, ScopeIndex

__all__ = ["CompiledRule", "RuleBook", "compile_rule"]

log = logging.getLogger(__name__)

# Deleted rules are remembered (bounded) so their firing instances can still be resolved by name.
RETIRED_KEPT = 10_000


@dataclass(frozen=True, slots=True)
class CompiledRule:
    id: str
    metric: str
    no_data_after: float
    rule: Rule
    scope: Filter
    need: Need
    evidence_span: float
    timing: Timing
    # Digest of what is evaluated: a new version that changes it restarts a pending clock.
    definition: str
    text: str  # the condition, human-readable
    # Rules with equal keys get the same verdict on the same row (None: the verdict is the instance's own).
    shared_verdict: str | None


def compile_rule(rule: Rule) -> CompiledRule:
    evaluated = rule.model_dump(
        mode="json",
        include={"channel", "scope", "metric", "condition", "for_", "keep_firing_for", "no_data_after"},
    )
    definition = hashlib.sha256(orjson.dumps(evaluated, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]
    condition = orjson.dumps(evaluated["condition"], option=orjson.OPT_SORT_KEYS).decode()
    return CompiledRule(
        id=rule.id,
        metric=rule.metric,
        no_data_after=float(rule.no_data_after),
        rule=rule,
        scope=compile_filter(rule.scope or None, CHANNELS[rule.channel].fields),
        need=need_of(rule),
        evidence_span=evidence_span(rule),
        timing=Timing(float(rule.for_), float(rule.keep_firing_for)),
        definition=definition,
        text=describe(rule.condition, rule.metric),
        # A crossing remembers per instance; any other condition gives one verdict per series and row.
        shared_verdict=None if '"crosses"' in condition else f"{rule.metric}\x00{condition}",
    )


class RuleBook:
    """Rules by id (disabled ones too, so their firing instances can be closed) and, per channel, the
    enabled ones indexed by scope. ``generation`` moves on every change."""

    def __init__(self) -> None:
        self.rules: dict[str, CompiledRule] = {}
        self.indexes: dict[str, ScopeIndex[CompiledRule]] = {
            channel: ScopeIndex(fields) for channel, fields in INDEXED_FIELDS.items()
        }
        self.retired: OrderedDict[str, CompiledRule] = OrderedDict()
        self.generation = 0
        self.rejected = 0

    def put(self, rule: Rule) -> None:
        compiled = compile_rule(rule)
        self._unindex(rule.id)
        self.rules[rule.id] = compiled
        if rule.enabled:
            self.indexes[rule.channel].add(rule.id, rule.scope, compiled)
        self.generation += 1

    def remove(self, rule_id: str) -> None:
        self._unindex(rule_id)
        removed = self.rules.pop(rule_id, None)
        if removed is not None:
            self.retired[rule_id] = removed
            while len(self.retired) > RETIRED_KEPT:
                self.retired.popitem(last=False)
            self.generation += 1

    def _unindex(self, rule_id: str) -> None:
        previous = self.rules.get(rule_id)
        if previous is not None:
            self.indexes[previous.rule.channel].remove(rule_id)

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        """One ``alerts.rules`` record: a rule, or a tombstone (deleted). A value that is not a valid rule
        is logged and skipped; the rule's previous version, if any, stays in force."""
        rule_id = key.decode("utf-8", "replace") if key is not None else ""
        if value is None:
            self.remove(rule_id)
            return
        try:
            rule = Rule.model_validate_json(value)
        except ValidationError as err:
            self.rejected += 1
            log.error("alerts.rules: record for rule %r is not a valid rule, skipped: %s", rule_id, err)
            return
        if rule.id != rule_id:
            self.rejected += 1
            log.error("alerts.rules: record key %r differs from the rule's id %r, skipped", rule_id, rule.id)
            return
        self.put(rule)

    def match(self, channel: str, row: Mapping[str, Any]) -> list[CompiledRule]:
        """The enabled rules of ``channel`` whose scope matches ``row``."""
        index = self.indexes.get(channel)
        if index is None:
            return []
        return [rule for rule in index.candidates(row) if rule.scope.predicate(row)]

    def covers(self, rule_id: str, channel: str, row: Mapping[str, Any]) -> CompiledRule | None:
        """The rule if it still exists, is enabled, is on ``channel`` and its scope matches ``row``."""
        compiled = self.rules.get(rule_id)
        if compiled is None or not compiled.rule.enabled or compiled.rule.channel != channel:
            return None
        return compiled if compiled.scope.predicate(row) else None

    def __len__(self) -> int:
        return len(self.rules)
