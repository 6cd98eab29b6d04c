"""An alert rule: scope, metric, condition and notification settings, as the API stores it and the
``alerts.rules`` topic carries it. Validation here is the one place a rule is checked, so the API, the
back-test and the evaluator accept exactly the same rules."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline.alerting.durations import Duration
from pipeline.channels import CHANNELS
from pipeline.filters import FilterError, compile_filter

__all__ = [
    "Threshold",
    "Crosses",
    "Change",
    "Anomaly",
    "AllOf",
    "AnyOf",
    "Condition",
    "WebhookTarget",
    "EmailTarget",
    "WebSocketTarget",
    "NotifyTarget",
    "RuleSpec",
    "Rule",
    "ALERT_CHANNELS",
    "MAX_CONDITION_DEPTH",
]

# Channels whose rows are latest-per-key state; chain events are a stream of facts, not a metric.
ALERT_CHANNELS = ("tvl", "prices", "yields")
MAX_CONDITION_DEPTH = 3
Comparison = Literal["<", "<=", ">", ">="]
ShortText = Annotated[str, Field(min_length=1, max_length=200)]
LabelName = Annotated[str, Field(pattern=r"^[a-zA-Z_][a-zA-Z0-9_]{0,63}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True, populate_by_name=True)


class Threshold(_Strict):
    """True while ``metric <op> value``."""

    kind: Literal["threshold"] = "threshold"
    op: Comparison
    value: float


class Crosses(_Strict):
    """True from the update where the metric passes ``value`` in ``direction`` (the previous value was on
    the other side) while it stays past it: a series that starts past the line never fires."""

    kind: Literal["crosses"] = "crosses"
    direction: Literal["above", "below"]
    value: float


class Change(_Strict):
    """Percent change of the metric over ``window`` (any duration; 1h/1d/7d are the usual ones), compared
    with ``value`` in percent. The comparison point is the one nearest to ``now - window``, within half a
    window; without one the change is unknown and the instance is no-data, never -100%."""

    kind: Literal["change"] = "change"
    window: Duration
    op: Comparison
    value: float

    @field_validator("window")
    @classmethod
    def _positive(cls, window: int) -> int:
        if window <= 0:
            raise ValueError("a change window must be longer than 0s")
        return window


class Anomaly(_Strict):
    """Robust z-score of the latest value against the trailing ``window``:
    (x - median) / (1.4826 * MAD). True when beyond ``z`` in ``direction``; unknown with fewer than
    ``min_points`` points or a zero MAD."""

    kind: Literal["anomaly"] = "anomaly"
    window: Duration
    z: Annotated[float, Field(gt=0, le=100)] = 3.5
    direction: Literal["above", "below", "either"] = "either"
    min_points: Annotated[int, Field(ge=3, le=10_000)] = 8


class AllOf(_Strict):
    kind: Literal["all"] = "all"
    conditions: Annotated[list[Condition], Field(min_length=1, max_length=8)]


class AnyOf(_Strict):
    kind: Literal["any"] = "any"
    conditions: Annotated[list[Condition], Field(min_length=1, max_length=8)]


Condition = Annotated[Threshold | Crosses | Change | Anomaly | AllOf | AnyOf, Field(discriminator="kind")]
AllOf.model_rebuild()
AnyOf.model_rebuild()


def condition_depth(condition: Condition) -> int:
    if isinstance(condition, AllOf | AnyOf):
        return 1 + max(condition_depth(c) for c in condition.conditions)
    return 1


def longest_window(condition: Condition) -> int:
    """The history, in seconds, the condition looks back over (0 for point conditions)."""
    if isinstance(condition, AllOf | AnyOf):
        return max(longest_window(c) for c in condition.conditions)
    if isinstance(condition, Change | Anomaly):
        return condition.window
    return 0


class WebhookTarget(_Strict):
    type: Literal["webhook"] = "webhook"
    endpoint: Annotated[str, Field(min_length=1, max_length=64, description="a webhook endpoint's id")]


class EmailTarget(_Strict):
    type: Literal["email"] = "email"
    to: Annotated[str, Field(pattern=r"^[^@\s]{1,64}@[^@\s]{1,190}$")]


class WebSocketTarget(_Strict):
    """The owner's open WebSocket connections receive an ``alert`` message."""

    type: Literal["websocket"] = "websocket"


NotifyTarget = Annotated[WebhookTarget | EmailTarget | WebSocketTarget, Field(discriminator="type")]


class RuleSpec(_Strict):
    """What a user writes to create or replace a rule."""

    name: ShortText
    channel: Literal["tvl", "prices", "yields"]
    scope: Annotated[str, Field(max_length=2000)] = ""
    metric: Annotated[str, Field(min_length=1, max_length=64)]
    condition: Condition
    for_: Duration = Field(0, alias="for", description="pending this long before firing")
    keep_firing_for: Duration = 0
    # Input missing this long (no update for an instance) moves it to no-data; 0 means never by age alone.
    no_data_after: Duration = 0
    severity: Literal["info", "warning", "critical"] = "warning"
    labels: Annotated[dict[LabelName, Annotated[str, Field(max_length=200)]], Field(max_length=20)] = {}
    annotations: Annotated[dict[LabelName, Annotated[str, Field(max_length=2000)]], Field(max_length=10)] = {}
    channels: Annotated[list[NotifyTarget], Field(max_length=10)] = []
    # Alertmanager grouping: instances of this rule sharing these labels go out in one notification.
    group_by: Annotated[list[LabelName], Field(max_length=10)] = []
    group_wait: Duration = 30
    group_interval: Duration = 300
    repeat_interval: Duration = 4 * 3600
    send_resolved: bool = True
    enabled: bool = True

    @model_validator(mode="after")
    def _fits_channel(self) -> RuleSpec:
        fields = CHANNELS[self.channel].fields
        if fields.get(self.metric) not in ("number", "int"):
            numeric = sorted(name for name, kind in fields.items() if kind in ("number", "int"))
            raise ValueError(
                f"metric {self.metric!r} is not a numeric field of channel {self.channel!r}; "
                f"choose one of {', '.join(numeric)}"
            )
        try:
            compile_filter(self.scope or None, fields)
        except FilterError as err:
            raise ValueError(f"scope: {err}") from err
        if condition_depth(self.condition) > MAX_CONDITION_DEPTH:
            raise ValueError(f"condition nests deeper than {MAX_CONDITION_DEPTH} levels")
        return self


class Rule(RuleSpec):
    """A stored rule: the value of ``alerts.rules`` (key: ``id``; a deleted rule is a tombstone)."""

    id: Annotated[str, Field(min_length=1, max_length=64)]
    owner: ShortText
    version: Annotated[int, Field(ge=1)] = 1
    created_at: datetime
    updated_at: datetime
