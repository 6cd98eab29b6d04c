"""Silences as Alertmanager has them: label matchers (=, !=, =~, !~) and a time window; pure."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import re2

__all__ = [
    "Matcher",
    "Pattern",
    "SilenceWindow",
    "MatcherError",
    "MAX_REGEX_LENGTH",
    "compile_regex",
    "parse_matchers",
    "matches",
    "muted_until",
]

OPS = ("=", "!=", "=~", "!~")
MAX_MATCHERS = 20
MAX_VALUE_LENGTH = 500
# Regexes run against the labels of the owner's alerts at every flush: short ones compile and run cheaply.
MAX_REGEX_LENGTH = 256
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]{0,63}$")
# RE2 (Alertmanager's own syntax, Go's regexp) matches in time linear in the text whatever the pattern, so a
# silence like `(a+)+$` cannot stall the notifier the way a backtracking engine would. Its errors go to the
# caller as MatcherError, not to stderr.
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False


class MatcherError(ValueError):
    """A matcher that cannot be used; the message names it and says why."""


class Pattern(Protocol):
    """A compiled regular expression (RE2)."""

    def fullmatch(self, text: str) -> object | None: ...


def compile_regex(value: str) -> Pattern:
    """``value`` compiled by RE2, or MatcherError saying what is wrong (the caller names the matcher)."""
    if len(value) > MAX_REGEX_LENGTH:
        raise MatcherError(
            f"a regular expression may be at most {MAX_REGEX_LENGTH} characters long, not {len(value)}"
        )
    try:
        pattern: Pattern = re2.compile(value, _RE2_OPTIONS)
    except re2.error as err:
        reason = err.args[0].decode(errors="replace") if err.args and isinstance(err.args[0], bytes) else err
        raise MatcherError(
            f"{value[:60]!r} is not a regular expression in RE2 syntax (as Alertmanager's; backreferences"
            f" and lookarounds are not supported): {reason}"
        ) from None
    return pattern


@dataclass(frozen=True)
class Matcher:
    name: str
    op: str
    value: str
    pattern: Pattern | None = None

    def __call__(self, labels: Mapping[str, str]) -> bool:
        # A missing label matches as "", as in Alertmanager (so `team!="x"` matches alerts without a team).
        actual = labels.get(self.name, "")
        if self.op == "=":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        assert self.pattern is not None
        # Regular expressions are anchored at both ends, as in Prometheus.
        found = self.pattern.fullmatch(actual) is not None
        return found if self.op == "=~" else not found


@dataclass(frozen=True)
class SilenceWindow:
    matchers: tuple[Matcher, ...]
    starts_at: datetime
    ends_at: datetime

    def active(self, now: datetime) -> bool:
        return self.starts_at <= now < self.ends_at


def parse_matchers(raw: Sequence[Mapping[str, Any]]) -> tuple[Matcher, ...]:
    """Matchers from their stored form ``[{"name", "op", "value"}]``; MatcherError names the bad one."""
    if not raw:
        raise MatcherError("a silence needs at least one matcher (an empty one would mute everything)")
    if len(raw) > MAX_MATCHERS:
        raise MatcherError(f"a silence has at most {MAX_MATCHERS} matchers, not {len(raw)}")
    parsed = []
    for n, item in enumerate(raw):
        name, op, value = item.get("name"), item.get("op", "="), item.get("value")
        where = f"matcher {n} ({name!r})"
        if not isinstance(name, str) or not _LABEL_NAME.match(name):
            raise MatcherError(f"{where}: name must be a label name like 'chain' or 'severity'")
        if op not in OPS:
            raise MatcherError(f"{where}: op {op!r} is not one of {', '.join(OPS)}")
        if not isinstance(value, str) or len(value) > MAX_VALUE_LENGTH:
            raise MatcherError(f"{where}: value must be text of at most {MAX_VALUE_LENGTH} characters")
        pattern = None
        if op in ("=~", "!~"):
            try:
                pattern = compile_regex(value)
            except MatcherError as err:
                raise MatcherError(f"{where}: {err}") from None
        parsed.append(Matcher(name, op, value, pattern))
    return tuple(parsed)


def matches(matchers: Iterable[Matcher], labels: Mapping[str, str]) -> bool:
    """True when every matcher matches (and there is at least one)."""
    checked = False
    for matcher in matchers:
        if not matcher(labels):
            return False
        checked = True
    return checked


def muted_until(
    silences: Iterable[SilenceWindow], labels: Mapping[str, str], now: datetime
) -> datetime | None:
    """When the last active silence muting these labels ends; None when none mutes them now."""
    ends = [s.ends_at for s in silences if s.active(now) and matches(s.matchers, labels)]
    return max(ends) if ends else None
