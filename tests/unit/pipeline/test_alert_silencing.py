"""Silence matchers as Alertmanager has them: equality, anchored regular expressions, missing labels, time."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from pipeline.alerting.silencing import (
    MatcherError,
    SilenceWindow,
    compile_regex,
    matches,
    muted_until,
    parse_matchers,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)
LABELS = {"alertname": "drop", "chain": "Terra", "severity": "critical"}


def one(name: str, op: str, value: str) -> bool:
    return matches(parse_matchers([{"name": name, "op": op, "value": value}]), LABELS)


def test_operators() -> None:
    assert one("chain", "=", "Terra") and not one("chain", "=", "terra")
    assert one("chain", "!=", "Solana") and not one("chain", "!=", "Terra")
    assert one("chain", "=~", "Ter.*") and one("chain", "=~", "Terra|Solana")
    assert not one("chain", "=~", "Ter")  # anchored at both ends, as in Prometheus
    assert not one("chain", "=~", "erra")
    assert one("chain", "!~", "Sol.*") and not one("chain", "!~", "T.*")


def test_a_missing_label_matches_as_empty() -> None:
    assert one("team", "=", "") and one("team", "!=", "core") and one("team", "=~", ".*")
    assert not one("team", "=", "core")


def test_every_matcher_must_match() -> None:
    both = parse_matchers(
        [{"name": "chain", "value": "Terra"}, {"name": "severity", "op": "=", "value": "info"}]
    )
    assert both[0].op == "="  # op defaults to equality
    assert not matches(both, LABELS)
    assert matches(both[:1], LABELS)
    assert not matches((), LABELS)  # no matcher mutes nothing


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ([], "at least one matcher"),
        ([{"name": "chain", "op": "==", "value": "x"}], "op '=='"),
        ([{"name": "9chain", "op": "=", "value": "x"}], "label name"),
        ([{"name": "chain", "op": "=~", "value": "(unclosed"}], "not a regular expression"),
        ([{"name": "chain", "op": "=", "value": 3}], "value must be text"),
        ([{"name": "chain", "op": "=", "value": "x"}] * 21, "at most 20"),
        ([{"name": "chain", "op": "=~", "value": "a" * 257}], "at most 256 characters"),
        # RE2 has no backreferences or lookarounds: refused when the silence is made, naming the matcher.
        ([{"name": "chain", "op": "=~", "value": r"(a)\1"}], r"matcher 0 \('chain'\): .*backreferences"),
        ([{"name": "severity", "op": "!~", "value": "(?=x)x"}], r"matcher 0 \('severity'\): .*lookarounds"),
        ([{"name": "chain", "op": "=~", "value": "(a{1000}){1000}"}], "invalid repetition size"),
    ],
)
def test_bad_matchers_are_named(raw: list[dict[str, object]], message: str) -> None:
    with pytest.raises(MatcherError, match=message):
        parse_matchers(raw)


def test_muted_until_the_last_active_matching_silence_ends() -> None:
    terra = parse_matchers([{"name": "chain", "op": "=", "value": "Terra"}])
    critical = parse_matchers([{"name": "severity", "op": "=", "value": "critical"}])
    solana = parse_matchers([{"name": "chain", "op": "=", "value": "Solana"}])
    windows = [
        SilenceWindow(terra, NOW - timedelta(hours=1), NOW + timedelta(minutes=10)),
        SilenceWindow(critical, NOW - timedelta(hours=1), NOW + timedelta(minutes=30)),
        SilenceWindow(solana, NOW - timedelta(hours=1), NOW + timedelta(hours=5)),  # does not match
        SilenceWindow(terra, NOW + timedelta(minutes=1), NOW + timedelta(hours=9)),  # not started yet
        SilenceWindow(terra, NOW - timedelta(hours=2), NOW),  # ended (the end is exclusive)
    ]
    assert muted_until(windows, LABELS, NOW) == NOW + timedelta(minutes=30)
    assert muted_until(windows[2:], LABELS, NOW) is None


@pytest.mark.parametrize("pattern", [r"(a+)+$", r"(a|aa)*c", r"(x+x+)+y", r"(.*a){20}"])
def test_patterns_that_backtrack_catastrophically_elsewhere_match_in_linear_time(pattern: str) -> None:
    # Each would take Python's re minutes or more on this text; RE2 never backtracks.
    text = "a" * 50_000 + "b"
    started = time.perf_counter()
    assert compile_regex(pattern).fullmatch(text) is None
    assert not matches(parse_matchers([{"name": "chain", "op": "=~", "value": pattern}]), {"chain": text})
    assert time.perf_counter() - started < 0.5


def test_regex_errors_say_what_is_wrong_without_logging_to_stderr(capfd: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(
        MatcherError, match=r"'Terra\(' is not a regular expression in RE2 syntax.*missing \)"
    ):
        compile_regex("Terra(")
    assert capfd.readouterr().err == ""
