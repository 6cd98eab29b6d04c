"""Evaluate every rule that covers one derived row, against state kept in a mapping (a faust table in the
agent, a dict in the back-test): the one code path both use.

State keys (one table, so one row's writes reach one changelog partition in order):
  ``f|<fingerprint>``  an instance that is not plainly normal (pipeline.alerting.instance)
  ``s|<series>``       {offset, as_of, partition, channel, row, open, trails}: the series' last applied row,
                       the rules with a stored instance on it, and the trailing history of each metric its
                       rules use (pipeline.alerting.trailing); written last, one changelog message per row
A row whose offset is at or below its series' recorded offset was applied already: it changes nothing and
emits nothing. Writes are returned, not made, so the caller can first deliver the transitions: after a
crash the changelog then never holds a state whose transition was not delivered, and a transition
delivered twice carries the same (fingerprint, source).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from pipeline.alerting.conditions import Sample, Verdict, evaluate
from pipeline.alerting.instance import Instance, age_out, close, is_silent, step
from pipeline.alerting.messages import AlertTransition, fingerprint
from pipeline.alerting.partitions import SERIES_PREFIX, PartitionState, SeriesInfo
from pipeline.alerting.rule_book import CompiledRule, RuleBook
from pipeline.alerting.trailing import Need, Trail, evidence
from pipeline.alerting.transition import Position, build_transition

__all__ = ["Engine", "Outcome", "StateView", "apply_writes", "parse_time", "metric_value"]

Store = MutableMapping[str, Any]


class StateView(Protocol):
    """What the engine reads of the state: a dict, the faust table, or a batch's view of the table
    (pipeline/alerting/batch_writes.py)."""

    def get(self, key: str, /) -> Any: ...

    def items(self) -> Iterable[tuple[str, Any]]: ...


NORMAL = Instance()  # immutable: shared by every instance that is not stored
NEEDS_KEPT = 50_000  # distinct matched-rule sets remembered (about one per series)


@dataclass
class Outcome:
    transitions: list[AlertTransition] = field(default_factory=list)
    writes: dict[str, Any] = field(default_factory=dict)  # in order; None deletes the key
    skipped: str | None = None  # why nothing was evaluated: redelivered, late, no_time
    evaluated: int = 0  # rules evaluated for the row


def parse_time(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


def metric_value(row: Mapping[str, Any], metric: str) -> float | None:
    value = row.get(metric)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def apply_writes(store: Store, writes: Mapping[str, Any]) -> None:
    """Make an outcome's writes, in order (the series record, written last, marks the row applied)."""
    for key, value in writes.items():
        if value is None:
            if key in store:
                del store[key]
        else:
            store[key] = value


def _needs(rules: list[CompiledRule]) -> dict[str, Need]:
    """The history each metric needs for these rules: the longest span at the finest resolution."""
    spans: dict[str, float] = {}
    resolutions: dict[str, float] = {}
    for rule in rules:
        metric, need = rule.metric, rule.need
        span = spans.get(metric)
        if span is None:
            spans[metric], resolutions[metric] = need.span, need.resolution
            continue
        if need.span > span:
            spans[metric] = need.span
        if need.resolution < resolutions[metric]:
            resolutions[metric] = need.resolution
    return {metric: Need(spans[metric], resolutions[metric]) for metric in spans}


def _instance_key(rule_id: str, series: str) -> str:
    return f"f|{fingerprint(rule_id, series)}"


class _View:
    """Reads through the writes not yet applied."""

    def __init__(self, store: StateView, writes: dict[str, Any]) -> None:
        self.store = store
        self.writes = writes

    def get(self, key: str) -> Any:
        return self.writes[key] if key in self.writes else self.store.get(key)


Origin = Callable[[str, Mapping[str, Any]], int]


class Engine:
    """``origin`` names the raw partition a row came from (pipeline/alerting/origin.py); without it, all rows
    of a channel are taken as one stream ordered in event time (the back-test's case)."""

    def __init__(self, book: RuleBook, origin: Origin | None = None) -> None:
        self.book = book
        self.origin = origin
        self.partitions: dict[int, PartitionState] = {}
        # The history needs of a set of matched rules, per rule book generation: rows of one series match
        # the same rules row after row, and working the needs out costs as much as a rule's evaluation.
        self._needs: dict[tuple[str, ...], dict[str, Need]] = {}
        self._needs_generation = -1

    def stream_of(self, channel: str, row: Mapping[str, Any]) -> str:
        return f"{channel}@{self.origin(channel, row)}" if self.origin is not None else channel

    def forget(self, partitions: Iterable[int]) -> None:
        """Partitions this worker no longer owns: rebuilt from the table if they come back."""
        for partition in partitions:
            self.partitions.pop(partition, None)

    def process(
        self, store: StateView, channel: str, series: str, row: Mapping[str, Any], position: Position
    ) -> Outcome:
        key = SERIES_PREFIX + series
        record: dict[str, Any] | None = store.get(key)
        if record is not None and position.offset <= record["offset"]:
            return Outcome(skipped="redelivered")
        as_of = parse_time(row.get("as_of"))
        if as_of is None:
            return Outcome(skipped="no_time")
        if record is not None and as_of < record["as_of"]:
            return Outcome(skipped="late")
        part = self._partition(store, position.partition)
        out = Outcome()
        view = _View(store, out.writes)
        open_ids = set(record.get("open", ())) if record else set()
        matched = self.book.match(channel, row)
        out.evaluated = len(matched)
        needs = self._needs_of(matched)
        stored = record.get("trails", {}) if record else {}
        trails = {metric: Trail.from_json(stored.get(metric)) for metric in needs}
        values = {metric: metric_value(row, metric) for metric in needs}
        samples = {
            metric: Sample(as_of, values[metric], trails[metric].before(as_of), trails[metric].since)
            for metric in needs
        }
        stale = row.get("stale") is True
        verdicts: dict[str, tuple[Verdict, frozenset[str]]] = {}
        for rule in matched:
            sample = samples[rule.metric]
            previous = self._load(view, rule.id, series, open_ids) if rule.id in open_ids else NORMAL
            shared = rule.shared_verdict
            if shared is None:
                verdict, latches = evaluate(rule.rule.condition, sample, previous.latches)
            else:
                found = verdicts.get(shared)
                if found is None:
                    found = verdicts[shared] = evaluate(rule.rule.condition, sample)
                verdict, latches = found
            if previous is NORMAL and not latches and not stale:
                # The common case, decided without the state machine: normal, and nothing to announce.
                if verdict.holds is False or (verdict.holds is None and verdict.warming):
                    continue
            current = step(previous, verdict, latches, as_of, rule.timing, rule.definition, stale)
            if current is not previous and current != previous:
                self._save(
                    out, open_ids, rule, series, row, previous, current, verdict, as_of, sample, position
                )
        for rule_id in sorted(open_ids.difference([rule.id for rule in matched])) if open_ids else ():
            self._close(view, out, open_ids, rule_id, series, row, as_of, position)
        for metric, trail in trails.items():
            trail.add(as_of, values[metric], needs[metric])
        stream = self.stream_of(channel, row)
        part.note(series, channel, stream, as_of, row, frozenset(open_ids))
        self._sweep_removed(view, out, part, series, position)
        self._sweep_aged(view, out, part, stream, series, position)
        out.writes[key] = {
            "offset": position.offset,
            "as_of": as_of,
            "partition": position.partition,
            "channel": channel,
            "row": dict(row),
            "open": sorted(open_ids),
            # Only the metrics today's rules use: a metric no rule needs any more is forgotten.
            "trails": {metric: trail.to_json() for metric, trail in trails.items()},
        }
        waits = [rule.no_data_after for rule in matched if rule.no_data_after > 0]
        if waits:
            part.push_deadline(stream, as_of + min(waits), series, as_of)
        return out

    def _needs_of(self, matched: list[CompiledRule]) -> dict[str, Need]:
        if self._needs_generation != self.book.generation or len(self._needs) >= NEEDS_KEPT:
            self._needs.clear()
            self._needs_generation = self.book.generation
        key = tuple([rule.id for rule in matched])
        needs = self._needs.get(key)
        if needs is None:
            needs = self._needs[key] = _needs(matched)
        return needs

    def _partition(self, store: StateView, partition: int) -> PartitionState:
        part = self.partitions.get(partition)
        if part is None:
            part = PartitionState.rebuild(partition, store.items(), self.stream_of)
            self.partitions[partition] = part
            for series, info in part.series.items():
                waits = [r.no_data_after for r in self.book.match(info.channel, info.row)]
                if any(waits):
                    part.push_deadline(
                        info.stream, info.as_of + min(w for w in waits if w), series, info.as_of
                    )
        return part

    def _load(self, view: _View, rule_id: str, series: str, open_ids: set[str]) -> Instance:
        if rule_id not in open_ids:
            return NORMAL  # not stored: plainly normal
        return Instance.from_json(view.get(_instance_key(rule_id, series)))

    def _save(
        self,
        out: Outcome,
        open_ids: set[str],
        rule: CompiledRule,
        series: str,
        row: Mapping[str, Any],
        previous: Instance,
        current: Instance,
        verdict: Verdict | None,
        as_of: float,
        sample: Sample | list[list[float]],
        position: Position,
    ) -> None:
        """Keep the instance (or forget a plainly normal one) and announce a state change, with the evidence
        of ``sample`` (or those points)."""
        if current.blank:
            if rule.id in open_ids:
                out.writes[_instance_key(rule.id, series)] = None
                open_ids.discard(rule.id)
        else:
            out.writes[_instance_key(rule.id, series)] = current.to_json()
            open_ids.add(rule.id)
        if not is_silent(previous.state, current.state):
            if isinstance(sample, Sample):
                points = evidence(sample.history, as_of, sample.value, rule.evidence_span)
            else:
                points = sample
            out.transitions.append(
                build_transition(rule, series, row, previous, current, verdict, as_of, points, position)
            )

    def _close(
        self,
        view: _View,
        out: Outcome,
        open_ids: set[str],
        rule_id: str,
        series: str,
        row: Mapping[str, Any],
        at: float,
        position: Position,
    ) -> None:
        """The rule no longer covers the series (deleted, disabled, rescoped): forget the instance, and
        resolve it if it was firing."""
        previous = self._load(view, rule_id, series, open_ids)
        out.writes[_instance_key(rule_id, series)] = None
        open_ids.discard(rule_id)
        rule = self.book.rules.get(rule_id) or self.book.retired.get(rule_id)
        if previous.state == "firing" and rule is not None:
            current = close(previous, at)
            out.transitions.append(
                build_transition(rule, series, row, previous, current, None, at, [], position)
            )

    def _sweep_removed(
        self, view: _View, out: Outcome, part: PartitionState, current: str, position: Position
    ) -> None:
        """After a rule change, close the instances of other series that their rule no longer covers."""
        if part.generation == self.book.generation:
            return
        part.generation = self.book.generation
        for series in sorted(part.with_open - {current}):
            info = part.series[series]
            gone = {r for r in info.open if self.book.covers(r, info.channel, info.row) is None}
            if not gone:
                continue
            open_ids = set(info.open)
            at = part.watermarks.get(info.stream, info.as_of)
            for rule_id in sorted(gone):
                self._close(view, out, open_ids, rule_id, series, info.row, at, position)
            self._rewrite_open(view, out, part, series, open_ids)

    def _sweep_aged(
        self, view: _View, out: Outcome, part: PartitionState, stream: str, current: str, position: Position
    ) -> None:
        """Series of this stream with no update for a rule's ``no_data_after`` (event time, against the
        newest row of the stream) move to no_data."""
        watermark = part.watermarks[stream]
        for series, info in part.due(stream):
            if series == current:
                continue
            age = watermark - info.as_of
            waiting = [r for r in self.book.match(info.channel, info.row) if r.no_data_after > 0]
            open_ids = set(info.open)
            for rule in waiting:
                if rule.no_data_after > age:
                    continue
                previous = self._load(view, rule.id, series, open_ids)
                current_instance = age_out(previous, watermark)
                if current_instance != previous:
                    points = self._last_points(view, rule, series, info)
                    self._save(
                        out,
                        open_ids,
                        rule,
                        series,
                        info.row,
                        previous,
                        current_instance,
                        None,
                        watermark,
                        points,
                        position,
                    )
            later = [r.no_data_after for r in waiting if r.no_data_after > age]
            if later:
                part.push_deadline(stream, info.as_of + min(later), series, info.as_of)
            if open_ids != info.open:
                self._rewrite_open(view, out, part, series, open_ids)

    def _last_points(
        self, view: _View, rule: CompiledRule, series: str, info: SeriesInfo
    ) -> list[list[float]]:
        record = view.get(SERIES_PREFIX + series) or {}
        trail = Trail.from_json(record.get("trails", {}).get(rule.metric))
        last = trail.points[-1][1] if trail.points and trail.points[-1][0] == info.as_of else None
        return evidence(trail.before(info.as_of), info.as_of, last, rule.evidence_span)

    def _rewrite_open(
        self, view: _View, out: Outcome, part: PartitionState, series: str, open_ids: set[str]
    ) -> None:
        key = SERIES_PREFIX + series
        record = view.get(key)
        if record is not None:
            out.writes[key] = {**record, "open": sorted(open_ids)}
        part.set_open(series, frozenset(open_ids))
