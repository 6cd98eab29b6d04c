"""Reading ``alerts.triggered`` values: an AlertTransition, or an error naming what is wrong."""

from __future__ import annotations

from datetime import datetime
from typing import cast

from pydantic import BaseModel, ConfigDict, ValidationError

from pipeline.alerting.messages import AlertTransition, InstanceState

__all__ = ["TransitionError", "TransitionModel", "parse_transition"]

# Column widths of alert_events (pipeline/storage/models.py): longer values would fail the insert.
_WIDTHS = {"fingerprint": 64, "rule_id": 64, "owner": 200, "source": 300}


class TransitionModel(BaseModel):
    """AlertTransition (a typing.TypedDict, which pydantic cannot validate on Python 3.11) as a model;
    tests/unit/pipeline/test_alert_delivery_rules.py keeps the two in step."""

    # Fields added to the contract later must not stop notifications from older notifiers.
    model_config = ConfigDict(extra="ignore")

    fingerprint: str
    rule_id: str
    rule_version: int
    rule_name: str
    owner: str
    channel: str
    series_key: str
    state: InstanceState
    previous_state: InstanceState
    severity: str
    labels: dict[str, str]
    annotations: dict[str, str]
    value: float | None
    threshold: float | None
    condition: str
    evidence: list[tuple[str, float | None]]
    starts_at: str | None
    ends_at: str | None
    as_of: str
    emitted_at: str
    source: str


class TransitionError(ValueError):
    """An alerts.triggered value that is not an AlertTransition; the message says what is wrong."""


def parse_transition(raw: bytes | None) -> AlertTransition:
    if raw is None:
        raise TransitionError("empty value: an alerts.triggered record is an AlertTransition JSON object")
    try:
        transition = cast(AlertTransition, TransitionModel.model_validate_json(raw).model_dump())
    except ValidationError as err:
        problems = [
            f"{'.'.join(str(part) for part in problem['loc']) or 'value'}: {problem['msg']}"
            for problem in err.errors(include_url=False)[:3]
        ]
        raise TransitionError("; ".join(problems)) from err
    for name, width in _WIDTHS.items():
        if not 0 < len(transition[name]) <= width:  # type: ignore[literal-required]
            raise TransitionError(f"{name} must be 1 to {width} characters long")
    try:
        datetime.fromisoformat(transition["as_of"])
    except ValueError as err:
        raise TransitionError(f"as_of {transition['as_of']!r} is not an ISO 8601 time") from err
    return transition
