"""Resume positions: the next Kafka offset per partition, as a short token clients hand back."""

from __future__ import annotations

import re

from web.state import Position

__all__ = ["encode_position", "decode_position", "PositionError", "MAX_PARTITIONS"]

MAX_PARTITIONS = 256
_TOKEN = re.compile(r"^(\d{1,3}-\d{1,19})(\.\d{1,3}-\d{1,19})*$")


class PositionError(ValueError):
    pass


def encode_position(position: Position) -> str:
    """``{0: 12, 1: 40}`` -> ``"0-12.1-40"``: readable, instance-independent, the same on every sidecar."""
    return ".".join(f"{p}-{o}" for p, o in sorted(position.items()))


def decode_position(token: str, partitions: int) -> Position:
    """The position a token names; partitions it leaves out start from their beginning."""
    if not isinstance(token, str) or len(token) > 24 * MAX_PARTITIONS or not _TOKEN.match(token):
        raise PositionError(
            f"resume token {str(token)[:60]!r} is not a position; pass the 'pos' of the last update received"
        )
    position: Position = {}
    for part in token.split("."):
        partition, offset = (int(x) for x in part.split("-"))
        if partition >= partitions:
            raise PositionError(
                f"resume token names partition {partition}, but the topic has {partitions} partitions"
            )
        position[partition] = offset
    return position
