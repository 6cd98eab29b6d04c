"""Durations as users write them ("90s", "30m", "1h", "1d", "7d"), held as seconds."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer

__all__ = ["Duration", "parse_duration", "format_duration"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_PATTERN = re.compile(r"^\s*(\d{1,7})\s*([smhdw])\s*$")
# Longer than any topic keeps data (raw retention is a week; history rollups allow 90 days of look-back).
MAX_SECONDS = 90 * 86400


def parse_duration(value: Any) -> int:
    """Seconds from "30m"-style text or a number of seconds; a clear error names the accepted forms."""
    if isinstance(value, bool):
        raise ValueError("a duration is text like '30m', '1h', '7d', or a number of seconds")
    if isinstance(value, int | float):
        seconds = int(value)
    elif isinstance(value, str) and (match := _PATTERN.match(value)):
        seconds = int(match.group(1)) * _UNITS[match.group(2)]
    else:
        raise ValueError(f"{value!r} is not a duration: write e.g. '90s', '30m', '1h', '1d' or '7d'")
    if not 0 <= seconds <= MAX_SECONDS:
        raise ValueError(f"duration {value!r} is outside 0s..90d")
    return seconds


def format_duration(seconds: int) -> str:
    """The shortest exact form: 3600 -> "1h", 5400 -> "90m", 0 -> "0s"."""
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


Duration = Annotated[int, BeforeValidator(parse_duration), PlainSerializer(format_duration, return_type=str)]
