"""Pure parts of delivery: retry backoff with full jitter, the email's content, transition parsing."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any, get_type_hints

import orjson
import pytest

from pipeline.alerting.attempt import Outgoing
from pipeline.alerting.delivery import retry_delay
from pipeline.alerting.email_sender import EVIDENCE_ROWS, render_email
from pipeline.alerting.messages import AlertTransition
from pipeline.alerting.transitions import TransitionError, TransitionModel, parse_transition


def test_backoff_doubles_up_to_the_cap_with_full_jitter() -> None:
    rng = random.Random(7)
    for attempt, ceiling in [(1, 2.0), (2, 4.0), (3, 8.0), (6, 64.0), (12, 100.0), (500, 100.0)]:
        draws = [retry_delay(attempt, 2.0, 100.0, rng) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in draws)
        assert max(draws) > 0.8 * ceiling and min(draws) < 0.2 * ceiling  # spread over the whole range


def _alert(**overrides: Any) -> dict[str, Any]:
    return {
        "state": "firing",
        "labels": {"chain": "Terra", "alertname": "drop<script>"},
        "annotations": {"summary": "Terra & friends"},
        "value": -41.5,
        "threshold": -20.0,
        "condition": "change over 1d < -20%",
        "evidence": [[f"2022-05-{d:02d}T00:00:00+00:00", 1e9 * d] for d in range(1, 31)],
        "starts_at": "2022-05-11T00:00:00+00:00",
        "ends_at": None,
        **overrides,
    }


def _outgoing(payload: dict[str, Any]) -> Outgoing:
    return Outgoing("msg_abc", "o", "email", "ops@example.com", payload, datetime(2026, 1, 1, tzinfo=UTC), 1)


def test_email_has_text_and_escaped_html_with_the_evidence() -> None:
    payload = {"status": "firing", "rule_name": "Terra drop", "rule_id": "r1", "alerts": [_alert(), _alert()]}
    message = render_email(_outgoing(payload), "alerts@x.test")
    assert message["Subject"] == "[FIRING:2] Terra drop"
    assert message["Message-ID"] == "<msg_abc@alerts.llamastream>"
    text, html = message.get_body(("plain",)), message.get_body(("html",))
    assert text is not None and html is not None
    plain, markup = text.get_content(), html.get_content()
    assert "alertname=drop<script>" in plain and "<script>" not in markup and "drop&lt;script&gt;" in markup
    assert "Terra &amp; friends" in markup and "30,000,000,000" in plain and "30,000,000,000" in markup
    assert markup.count("<tr>") == 2 * (1 + min(30, EVIDENCE_ROWS))


def test_resolved_email_subject_and_truncation_note() -> None:
    payload = {"status": "resolved", "rule_id": "r1", "alerts": [_alert(state="resolved")], "truncated": 4}
    message = render_email(_outgoing(payload), "alerts@x.test")
    assert message["Subject"] == "[RESOLVED] r1"
    text = message.get_body(("plain",))
    assert text is not None and "and 4 more alerts" in text.get_content()


def test_transition_model_keeps_in_step_with_the_contract() -> None:
    assert set(TransitionModel.model_fields) == set(get_type_hints(AlertTransition))


def _transition(**overrides: Any) -> bytes:
    value = {
        "fingerprint": "f" * 24,
        "rule_id": "r1",
        "rule_version": 1,
        "rule_name": "n",
        "owner": "o",
        "channel": "tvl",
        "series_key": "chain||Terra",
        "state": "firing",
        "previous_state": "pending",
        "severity": "critical",
        "labels": {"chain": "Terra"},
        "annotations": {},
        "value": -30.5,
        "threshold": -20,
        "condition": "c",
        "evidence": [["2022-05-10T00:00:00+00:00", 1.0], ["2022-05-11T00:00:00+00:00", None]],
        "starts_at": "2022-05-11T00:00:00+00:00",
        "ends_at": None,
        "as_of": "2022-05-11T00:00:00+00:00",
        "emitted_at": "2026-01-01T00:00:00+00:00",
        "source": "tvl.updates:1:42",
        **overrides,
    }
    return orjson.dumps(value)


def test_parse_transition_accepts_the_contract_and_names_what_is_wrong() -> None:
    parsed = parse_transition(_transition(future_field=1))
    assert parsed["state"] == "firing" and parsed["evidence"][1] == ("2022-05-11T00:00:00+00:00", None)
    assert "future_field" not in parsed
    for raw, message in [
        (None, "empty value"),
        (b"[1]", "value"),
        (_transition(state="exploded"), "state"),
        (_transition(fingerprint="x" * 65), "fingerprint must be 1 to 64"),
        (_transition(as_of="yesterday"), "not an ISO 8601 time"),
        (orjson.dumps({"rule_id": "r"}), "fingerprint: Field required"),
    ]:
        with pytest.raises(TransitionError, match=message):
            parse_transition(raw)
