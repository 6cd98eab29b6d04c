"""Alertmanager grouping as pure functions: keys, schedules (group_wait, group_interval, repeat_interval),
what a flush sends, resolved notices, states that do not notify, and silences."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from pipeline.alerting.grouping import (
    MAX_ALERTS_PER_NOTICE,
    FlushPlan,
    GroupState,
    NotifySettings,
    apply_transition,
    group_key,
    notification_id,
    plan_flush,
    target_of,
)
from pipeline.alerting.messages import AlertTransition
from pipeline.alerting.rules import EmailTarget, RuleSpec, WebhookTarget, WebSocketTarget

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SETTINGS = NotifySettings(
    name="r",
    channels=[{"type": "websocket"}],
    group_wait=30,
    group_interval=300,
    repeat_interval=3600,
    send_resolved=True,
)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def alert(chain: str, state: str, **labels: str) -> AlertTransition:
    return AlertTransition(
        fingerprint=f"fp-{chain}",
        rule_id="rule-1",
        rule_version=1,
        rule_name="drop",
        owner="o",
        channel="tvl",
        series_key=f"chain||{chain}",
        state=state,  # type: ignore[typeddict-item]
        previous_state="normal",
        severity="warning",
        labels={"alertname": "drop", "chain": chain, **labels},
        annotations={},
        value=-30.0,
        threshold=-20.0,
        condition="change over 1d < -20%",
        evidence=[],
        starts_at=None,
        ends_at=None,
        as_of="2026-01-01T00:00:00+00:00",
        emitted_at="2026-01-01T00:00:00+00:00",
        source=f"tvl.updates:0:{chain}:{state}",
    )


def never_muted(_: AlertTransition) -> datetime | None:
    return None


def apply(
    state: GroupState, *events: tuple[float, str, str], settings: NotifySettings = SETTINGS
) -> GroupState:
    for seconds, chain, kind in events:
        state = apply_transition(state, alert(chain, kind), settings, at(seconds))
    return state


def flush(state: GroupState, seconds: float, settings: NotifySettings = SETTINGS, **kw: Any) -> FlushPlan:
    return plan_flush(state, settings, {}, at(seconds), kw.get("muted", never_muted))


def chains(plan: FlushPlan) -> dict[str, str]:
    return {a["labels"]["chain"]: a["state"] for a in plan.alerts}


def test_group_key_depends_on_deployment_owner_rule_and_group_labels_only() -> None:
    key, labels = group_key("app", "o", "r", ["chain", "kind"], {"kind": "chain", "chain": "Terra", "x": "1"})
    assert labels == {"chain": "Terra", "kind": "chain"}
    assert (
        group_key("app", "o", "r", ["kind", "chain"], {"chain": "Terra", "kind": "chain", "x": "2"})[0] == key
    )
    assert group_key("app", "o", "r", ["chain", "kind"], {"chain": "Solana", "kind": "chain"})[0] != key
    assert group_key("app", "o2", "r", ["chain", "kind"], {"chain": "Terra", "kind": "chain"})[0] != key
    assert group_key("app2", "o", "r", ["chain", "kind"], {"chain": "Terra", "kind": "chain"})[0] != key
    assert group_key("app", "o", "r", ["team"], {})[1] == {"team": ""}  # missing groups as ""
    assert len(key) <= 128


def test_notification_ids_are_deterministic_per_group_flush_and_target() -> None:
    first = notification_id("grp", 0, "webhook", "ep_1")
    assert first == notification_id("grp", 0, "webhook", "ep_1") and first.startswith("msg_")
    others = {notification_id("grp", 1, "webhook", "ep_1"), notification_id("grp", 0, "email", "ep_1")}
    others |= {notification_id("grp2", 0, "webhook", "ep_1"), notification_id("grp", 0, "webhook", "ep_2")}
    assert first not in others and len(others) == 4
    assert target_of(WebhookTarget(endpoint="ep_1"), "o") == ("webhook", "ep_1")
    assert target_of(EmailTarget(to="a@b.c"), "o") == ("email", "a@b.c")
    assert target_of(WebSocketTarget(), "o") == ("websocket", "o")


def test_settings_read_from_a_stored_spec_with_the_rule_defaults() -> None:
    stored = {"name": "n", "group_wait": "1m", "repeat_interval": "2h", "channels": [{"type": "websocket"}]}
    settings = NotifySettings.model_validate({**stored, "condition": {"kind": "threshold"}, "for": "5m"})
    assert (settings.group_wait, settings.repeat_interval) == (60, 7200)
    defaults = RuleSpec.model_fields
    assert settings.group_interval == defaults["group_interval"].default
    assert settings.send_resolved is defaults["send_resolved"].default


def test_a_new_group_waits_group_wait_and_batches_what_arrives_meanwhile() -> None:
    state = apply(GroupState(), (0, "Terra", "firing"))
    assert state.next_flush_at == at(30)
    state = apply(state, (10, "Solana", "firing"), (20, "Ethereum", "pending"))
    assert state.next_flush_at == at(30)  # the first deadline holds; pending is not stored
    plan = flush(state, 30)
    assert plan.outcome == "send" and plan.status == "firing"
    assert chains(plan) == {"Terra": "firing", "Solana": "firing"}
    after = plan.state
    assert after.notified == {"fp-Terra": "firing", "fp-Solana": "firing"} and after.seq == 1
    assert after.last_flush_at == at(30) and after.next_flush_at == at(30 + 3600)


def test_a_change_in_a_notified_group_waits_until_last_flush_plus_group_interval() -> None:
    state = flush(apply(GroupState(), (0, "Terra", "firing")), 30).state
    changed = apply(state, (40, "Solana", "firing"))
    assert changed.next_flush_at == at(30 + 300)
    late = apply(state, (1000, "Solana", "firing"))
    assert late.next_flush_at == at(1000)  # the interval has passed: due now
    plan = flush(changed, 330)
    assert chains(plan) == {"Terra": "firing", "Solana": "firing"} and plan.state.seq == 2


def test_unchanged_firing_group_repeats_after_repeat_interval_only() -> None:
    state = flush(apply(GroupState(), (0, "Terra", "firing")), 30).state
    assert flush(state, 100).outcome == "none"
    repeat = flush(state, 30 + 3600)
    assert repeat.outcome == "send" and chains(repeat) == {"Terra": "firing"}
    assert repeat.state.seq == 2 and repeat.state.next_flush_at == at(30 + 7200)


def test_resolved_notice_sent_once_then_the_group_is_idle() -> None:
    state = flush(apply(GroupState(), (0, "Terra", "firing"), (1, "Solana", "firing")), 30).state
    state = apply(state, (100, "Terra", "resolved"))
    assert state.next_flush_at == at(330)
    plan = flush(state, 330)
    assert chains(plan) == {"Terra": "resolved", "Solana": "firing"} and plan.status == "firing"
    state = apply(plan.state, (400, "Solana", "resolved"))
    plan = flush(state, 630)
    assert chains(plan) == {"Solana": "resolved"} and plan.status == "resolved"
    assert plan.state.alerts == {} and plan.state.notified == {} and plan.state.next_flush_at is None


def test_no_resolved_notice_for_an_alert_the_receiver_never_heard_of() -> None:
    state = apply(GroupState(), (0, "Terra", "firing"), (10, "Terra", "resolved"))
    assert state.alerts == {} and state.next_flush_at is None
    assert flush(state, 30).outcome == "none"


def test_send_resolved_off_forgets_the_alert_without_a_message() -> None:
    quiet = SETTINGS.model_copy(update={"send_resolved": False})
    state = flush(apply(GroupState(), (0, "Terra", "firing"), settings=quiet), 30, quiet).state
    state = apply(state, (100, "Terra", "resolved"), settings=quiet)
    assert state.alerts == {} and state.notified == {} and state.next_flush_at is None


def test_resolved_then_normal_still_owes_the_resolved_notice() -> None:
    state = flush(apply(GroupState(), (0, "Terra", "firing")), 30).state
    state = apply(state, (100, "Terra", "resolved"), (101, "Terra", "normal"), (102, "Terra", "pending"))
    assert chains(flush(state, 330)) == {"Terra": "resolved"}


def test_no_data_after_firing_is_neither_repeated_nor_resolved_and_its_return_is_not_news() -> None:
    state = flush(apply(GroupState(), (0, "Terra", "firing")), 30).state
    gap = apply(state, (100, "Terra", "no_data"))
    assert gap.notified == {"fp-Terra": "firing"}
    assert flush(gap, 30 + 3600).outcome == "none"  # nothing firing to repeat
    back = apply(gap, (200, "Terra", "firing"))
    assert back.next_flush_at == gap.next_flush_at  # not a change: the repeat schedule stands
    ended = apply(gap, (200, "Terra", "normal"))  # the condition no longer holds: that ends the alert
    assert chains(flush(ended, 330)) == {"Terra": "normal"}


def test_silenced_alerts_are_left_out_and_an_all_muted_change_is_recorded_as_muted() -> None:
    ends = at(500)

    def terra_muted(a: AlertTransition) -> datetime | None:
        return ends if a["labels"]["chain"] == "Terra" else None

    state = apply(GroupState(), (0, "Terra", "firing"), (1, "Solana", "firing"))
    plan = flush(state, 30, muted=terra_muted)
    assert plan.outcome == "send" and chains(plan) == {"Solana": "firing"}
    assert plan.state.notified == {"fp-Solana": "firing", "fp-Terra": "muted"}
    assert plan.state.next_flush_at == ends  # when the silence ends, Terra goes out

    only_terra = apply(GroupState(), (0, "Terra", "firing"))
    muted = flush(only_terra, 30, muted=terra_muted)
    assert muted.outcome == "muted" and chains(muted) == {"Terra": "firing"} and muted.state.seq == 1
    again = flush(muted.state, 499, muted=terra_muted)
    assert again.outcome == "none"  # still muted and already recorded: nothing new to record
    unmuted = flush(muted.state, 500)
    assert unmuted.outcome == "send" and chains(unmuted) == {"Terra": "firing"}


def test_a_muted_alert_the_receiver_knows_is_not_repeated_and_no_busy_loop() -> None:
    state = flush(apply(GroupState(), (0, "Terra", "firing")), 30).state

    def muted(_: AlertTransition) -> datetime:
        return at(10**6)

    plan = flush(state, 30 + 3600, muted=muted)
    assert plan.outcome == "none" and plan.state.notified == {"fp-Terra": "firing"}
    assert plan.state.next_flush_at is not None and plan.state.next_flush_at > at(30 + 3600)


def test_zero_repeat_interval_never_makes_a_group_due_at_once() -> None:
    eager = SETTINGS.model_copy(update={"repeat_interval": 0, "group_wait": 0})
    plan = flush(apply(GroupState(), (0, "Terra", "firing"), settings=eager), 0, eager)
    assert plan.state.next_flush_at is not None and plan.state.next_flush_at > at(0)


def test_disabled_rule_or_changed_group_by_stops_the_group() -> None:
    state = apply(GroupState(), (0, "Terra", "firing"))
    off = SETTINGS.model_copy(update={"enabled": False})
    assert flush(state, 30, off).outcome == "none" and flush(state, 30, off).state.next_flush_at is None
    regrouped = SETTINGS.model_copy(update={"group_by": ["chain"]})
    assert plan_flush(state, regrouped, {}, at(30), never_muted).state.next_flush_at is None
    assert plan_flush(state, regrouped, {"chain": "Terra"}, at(30), never_muted).outcome == "send"


def test_a_huge_group_lists_a_bounded_number_of_alerts_and_counts_the_rest() -> None:
    state = GroupState()
    for n in range(MAX_ALERTS_PER_NOTICE + 5):
        state = apply(state, (0, f"c{n}", "firing"))
    plan = flush(state, 30)
    assert len(plan.alerts) == MAX_ALERTS_PER_NOTICE and plan.truncated == 5
    assert len(plan.state.notified) == MAX_ALERTS_PER_NOTICE + 5
