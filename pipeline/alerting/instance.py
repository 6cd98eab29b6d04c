"""The state machine of one alert instance (a rule applied to one series), in event time; pure.

normal -> pending (condition true, ``for`` > 0) -> firing (true for at least ``for``) -> resolved (false for
at least ``keep_firing_for``) -> normal or pending on the next evaluation. An unknown condition moves the
instance to no_data, a row flagged stale to stale; neither ever fires, and leaving firing for either ends
the firing (``ended_at``) just as resolving does. Times are event times (the rows' ``as_of``), so a replay
fires at the bar it would have fired live.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from pipeline.alerting.conditions import Verdict
from pipeline.alerting.messages import InstanceState

__all__ = ["Instance", "Timing", "step", "age_out", "close", "is_silent"]


@dataclass(frozen=True, slots=True)
class Timing:
    """The rule's durations, seconds."""

    for_: float = 0
    keep_firing_for: float = 0


@dataclass(frozen=True, slots=True)
class Instance:
    """What is kept per instance. A normal instance with no latches is not stored at all."""

    state: InstanceState = "normal"
    active_at: float | None = None  # the condition has held since (pending and firing)
    fired_at: float | None = None  # started firing (starts_at) of the current or last firing
    cleared_at: float | None = None  # while firing: the condition stopped holding (keep_firing_for)
    ended_at: float | None = None  # the last firing ended (ends_at)
    latches: frozenset[str] = frozenset()  # Crosses nodes that crossed and stayed past their line
    definition: str = ""  # digest of what the rule evaluates, at the last evaluation

    @property
    def blank(self) -> bool:
        return self.state == "normal" and not self.latches

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"state": self.state, "def": self.definition}
        for name in ("active_at", "fired_at", "cleared_at", "ended_at"):
            if (value := getattr(self, name)) is not None:
                data[name] = value
        if self.latches:
            data["latches"] = sorted(self.latches)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Instance:
        if not data:
            return cls()
        return cls(
            state=data["state"],
            active_at=data.get("active_at"),
            fired_at=data.get("fired_at"),
            cleared_at=data.get("cleared_at"),
            ended_at=data.get("ended_at"),
            latches=frozenset(data.get("latches", ())),
            definition=data.get("def", ""),
        )


def step(
    instance: Instance,
    verdict: Verdict,
    latches: frozenset[str],
    now: float,
    timing: Timing,
    definition: str,
    stale: bool = False,
) -> Instance:
    """The instance after evaluating its condition at event time ``now`` (``latches``: after that
    evaluation). A state change is a transition (see ``is_silent`` for the one that is not announced)."""
    state = instance.state
    if state == "normal" and not stale and not latches and not instance.latches:
        if verdict.holds is False or (verdict.holds is None and verdict.warming):
            return instance  # the common case: nothing to keep, nothing to announce
    current = instance
    if definition != current.definition and state == "pending":
        # What the rule evaluates changed: the pending clock restarts for the new condition. A firing
        # instance keeps firing while the new condition holds, so tuning a threshold does not flap it.
        current = replace(current, active_at=now)
    if latches != current.latches or definition != current.definition:
        current = replace(current, latches=latches, definition=definition)
    if stale:
        return _leave(current, "stale", now) if state != "stale" else current
    if verdict.holds is None:
        if verdict.warming and state in ("normal", "resolved"):
            # Not watched for a full window yet: nothing is missing, so this is not no-data.
            return replace(current, state="normal") if state == "resolved" else current
        return _leave(current, "no_data", now) if state != "no_data" else current
    if verdict.holds:
        if state == "firing":
            return replace(current, cleared_at=None) if current.cleared_at is not None else current
        active_at = current.active_at if state == "pending" and current.active_at is not None else now
        if now - active_at >= timing.for_:
            return replace(current, state="firing", active_at=active_at, fired_at=now, cleared_at=None)
        return replace(current, state="pending", active_at=active_at) if state != "pending" else current
    if state == "firing":
        cleared_at = current.cleared_at if current.cleared_at is not None else now
        if now - cleared_at >= timing.keep_firing_for:
            return replace(current, state="resolved", active_at=None, cleared_at=None, ended_at=now)
        return replace(current, cleared_at=cleared_at) if cleared_at != current.cleared_at else current
    return replace(current, state="normal", active_at=None) if state != "normal" else current


def _leave(instance: Instance, state: InstanceState, now: float) -> Instance:
    ended_at = now if instance.state == "firing" else instance.ended_at
    return replace(instance, state=state, active_at=None, cleared_at=None, ended_at=ended_at)


def age_out(instance: Instance, now: float) -> Instance:
    """No update for ``no_data_after``: the input is missing."""
    return instance if instance.state == "no_data" else _leave(instance, "no_data", now)


def close(instance: Instance, now: float) -> Instance:
    """The rule was deleted, disabled or no longer covers the series: a firing instance resolves."""
    if instance.state == "firing":
        return replace(instance, state="resolved", active_at=None, cleared_at=None, ended_at=now)
    return Instance()


def is_silent(previous: InstanceState, current: InstanceState) -> bool:
    """Whether a state change goes unannounced: only resolved -> normal, the forgetting of a resolved
    alert (Alertmanager's resolve timeout), which tells a receiver nothing."""
    return previous == current or (previous == "resolved" and current == "normal")
