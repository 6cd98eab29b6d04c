"""Pure parts of the alerts API: rule validation errors naming the field, quota months, the stored form of a
rule, pagination cursors, silence matchers and windows, webhook secrets, back-test summaries."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import make_mocked_request

from pipeline.storage.alert_rules import month_start, next_month_start, rule_of
from pipeline.storage.models import AlertRule, WebhookEndpoint
from pipeline.storage.webhook_endpoints import active_secrets, new_secret
from web.alert_http import next_cursor, page_of, validated
from web.alert_rules_routes import parse_rule_spec
from web.backtest_routes import _summary
from web.errors import ApiError
from web.silence_routes import SilenceSpec
from web.webhook_routes import RotateBody


def rule(**change: Any) -> dict[str, Any]:
    return {
        "name": "drop",
        "channel": "tvl",
        "scope": 'chain == "Terra"',
        "metric": "tvl_usd",
        "condition": {"kind": "change", "window": "1d", "op": "<", "value": -20},
        **change,
    }


def error_of(exc: pytest.ExceptionInfo[ApiError]) -> dict[str, Any]:
    body: dict[str, Any] = orjson.loads(exc.value.text or "{}")["error"]
    return body


@pytest.mark.parametrize(
    ("change", "field", "says"),
    [
        ({"metric": "symbol"}, "metric", "is not a numeric field"),
        ({"condition": {"kind": "change", "window": "soon", "op": "<", "value": 1}}, "condition.window",
         "'soon'"),
        (
            {"condition": {"kind": "all", "conditions": [{"kind": "threshold", "op": "<<", "value": 1}]}},
            "condition.conditions.0.op",
            "'<'",
        ),
        ({"channels": [{"type": "webhook"}]}, "channels.0.endpoint", "Field required"),
        ({"labels": {"change": 1}}, "labels.change", "valid string"),
        ({"for": True}, "for", "a duration is text"),
        (
            {"condition": {"kind": "all", "conditions": [{"kind": "any", "conditions": [
                {"kind": "all", "conditions": [{"kind": "threshold", "op": "<", "value": 1}]}]}]}},
            "condition",
            "deeper than 3 levels",
        ),
    ],
)  # fmt: skip
def test_rule_errors_name_the_field_as_written(change: dict[str, Any], field: str, says: str) -> None:
    with pytest.raises(ApiError) as exc:
        parse_rule_spec(rule(**change))
    error = error_of(exc)
    assert (exc.value.status_code, error["code"], error["field"]) == (400, "invalid_request", field), error
    assert says in error["message"], error


def test_a_bad_scope_names_its_position_and_the_enclosing_path() -> None:
    with pytest.raises(ApiError) as exc:
        parse_rule_spec(rule(scope='chain == "Terra" or tvl_usd >'), at="rule.")
    error = error_of(exc)
    assert (error["code"], error["field"], error["position"]) == ("invalid_filter", "rule.scope", 29), error
    assert error["expected"]


def test_the_stored_rule_is_what_the_topic_carries() -> None:
    spec = parse_rule_spec(rule(**{"for": "30m", "labels": {"team": "risk"}}))
    moment = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
    row = AlertRule(
        id="rule_1", owner="acme", app_id="app", spec=spec.model_dump(mode="json", by_alias=True), version=3,
        created_at=moment.replace(tzinfo=None), updated_at=moment, deleted_at=None,
    )  # fmt: skip
    document = rule_of(row).model_dump(mode="json", by_alias=True)
    assert document["for"] == "30m" and document["condition"]["window"] == "1d"
    assert (document["id"], document["owner"], document["version"]) == ("rule_1", "acme", 3)
    assert document["created_at"] == "2026-11-21T12:00:00Z"  # naive (SQLite) times are UTC
    assert parse_rule_spec({k: v for k, v in document.items() if k not in ("id", "owner", "version",
                            "created_at", "updated_at")}) == spec  # fmt: skip


@pytest.mark.parametrize(
    ("moment", "start", "reset"),
    [
        (datetime(2026, 11, 21, 12, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC),
         datetime(2026, 12, 1, tzinfo=UTC)),
        (datetime(2026, 12, 31, 23, 59, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC),
         datetime(2027, 1, 1, tzinfo=UTC)),
        # 23:30 on Jan 31st in New York is already February in UTC: quotas follow UTC months.
        (datetime(2027, 1, 31, 23, 30, tzinfo=UTC) + timedelta(hours=5), datetime(2027, 2, 1, tzinfo=UTC),
         datetime(2027, 3, 1, tzinfo=UTC)),
    ],
)  # fmt: skip
def test_quota_months_are_calendar_months_in_utc(moment: datetime, start: datetime, reset: datetime) -> None:
    assert (month_start(moment), next_month_start(moment)) == (start, reset)


def test_cursors_resume_after_the_last_row_and_refuse_forgeries() -> None:
    rows = [(datetime(2026, 1, 2, tzinfo=UTC), "b"), (datetime(2026, 1, 1, tzinfo=UTC), "a")]
    assert next_cursor(rows, 3, lambda r: r) is None  # a short page is the last one
    cursor = next_cursor(rows, 2, lambda r: r)
    assert cursor is not None
    after, limit = page_of(make_mocked_request("GET", f"/v1/alerts/rules?limit=2&cursor={cursor}"))
    assert (after, limit) == ((datetime(2026, 1, 1, tzinfo=UTC), "a"), 2)
    for query in (
        "cursor=abc",
        "cursor=" + base64.urlsafe_b64encode(b"[1,2,3]").decode(),
        "limit=201",
        "limit=x",
    ):
        with pytest.raises(ApiError) as exc:
            page_of(make_mocked_request("GET", f"/v1/alerts/rules?{query}"))
        assert exc.value.status_code == 400


def test_silence_windows_and_matchers() -> None:
    now = datetime.now(UTC)
    ok = {
        "matchers": [{"name": "chain", "op": "=~", "value": "Terra|Luna"}],
        "ends_at": (now + timedelta(hours=1)),
    }
    spec = validated(SilenceSpec, ok)
    assert spec.starts_at is None and spec.ends_at.tzinfo is not None
    naive = validated(
        SilenceSpec, {**ok, "ends_at": (now + timedelta(hours=1)).replace(tzinfo=None).isoformat()}
    )
    assert naive.ends_at.tzinfo == UTC
    for change, field in [
        ({"matchers": [{"name": "chain", "op": "=~", "value": "(("}]}, "matchers.0.value"),
        ({"matchers": [{"name": "chain", "op": "=", "value": "x" * 501}]}, "matchers.0.value"),
        ({"matchers": [{"name": "chain", "value": "x"}] * 21}, "matchers"),
        ({"ends_at": now - timedelta(seconds=1)}, "body"),
    ]:
        with pytest.raises(ApiError) as exc:
            validated(SilenceSpec, {**ok, **change})
        assert error_of(exc)["field"] == field, change


def test_webhook_secrets_follow_standard_webhooks_and_expire() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) == 32 and new_secret() != secret
    now = datetime(2026, 11, 21, tzinfo=UTC)
    row = WebhookEndpoint(
        secrets=[
            {"secret": "whsec_new", "created_at": now.isoformat(), "expires_at": None},
            {
                "secret": "whsec_old",
                "created_at": now.isoformat(),
                "expires_at": (now + timedelta(hours=1)).isoformat(),
            },
        ]
    )
    assert [s["secret"] for s in active_secrets(row, now)] == ["whsec_new", "whsec_old"]
    assert [s["secret"] for s in active_secrets(row, now + timedelta(hours=1))] == ["whsec_new"]
    assert validated(RotateBody, {}).overlap == 86400
    assert validated(RotateBody, {"overlap": "7d"}).overlap == 7 * 86400
    with pytest.raises(ApiError):
        validated(RotateBody, {"overlap": "8d"})


def test_backtest_summary_counts_starts_of_firing() -> None:
    def t(state: str, previous: str, at: str, key: str = "s") -> dict[str, Any]:
        return {"state": state, "previous_state": previous, "as_of": at, "series_key": key, "starts_at": None}

    transitions = [
        t("no_data", "normal", "d0"), t("normal", "no_data", "d1"), t("firing", "normal", "d2"),
        t("firing", "pending", "d3", "o"), t("resolved", "firing", "d4"), t("firing", "resolved", "d5"),
    ]  # fmt: skip
    summary = _summary(transitions, 2)
    assert summary["fired"] == 3 and [f["at"] for f in summary["fired_at"]] == ["d2", "d3", "d5"]
    assert (
        summary["resolved"] == 1 and summary["text"] == "would have fired 3 times across 2 series: d2, d3, d5"
    )
