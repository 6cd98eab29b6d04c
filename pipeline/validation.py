"""Validation at the edge: raw bytes in, a typed record or a one-line reason for the DLQ out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

from pydantic import BaseModel, ValidationError

__all__ = ["Rejected", "parse_record"]

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class Rejected:
    reason: str


def _describe(error: ValidationError) -> str:
    """``field: message (got value)`` for each problem, so the DLQ reason names what was wrong."""
    parts = []
    for problem in error.errors(include_url=False)[:5]:
        where = ".".join(str(part) for part in problem["loc"]) or "record"
        got = problem.get("input")
        shown = repr(got)[:80] if not isinstance(got, dict) else "an object"
        parts.append(f"{where}: {problem['msg']} (got {shown})")
    more = error.error_count() - len(parts)
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def parse_record(raw: bytes | None, model: type[M], max_bytes: int) -> M | Rejected:
    """Validate one raw message value against its topic's schema."""
    if raw is None:
        return Rejected("empty value: a raw record must be a JSON object")
    if len(raw) > max_bytes:
        return Rejected(f"oversized record: {len(raw)} bytes, the limit is {max_bytes}")
    try:
        return model.model_validate_json(raw)
    except ValidationError as error:
        return Rejected(_describe(error))
