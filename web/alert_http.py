"""What every alerts route shares: the caller's owner (a key is required), JSON bodies validated by pydantic
models with errors naming the field, keyset pagination parameters, and timestamps."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel, Field, ValidationError

from pipeline.storage.alert_pages import Cursor, utc
from web.errors import ApiError
from web.keys import PRINCIPAL
from web.openapi import Param
from web.principal import Principal

__all__ = [
    "DEFAULT_PAGE",
    "MAX_PAGE",
    "PAGE_PARAMS",
    "Page",
    "caller",
    "read_json",
    "validated",
    "field_errors",
    "page_of",
    "next_cursor",
    "query_time",
    "iso",
    "not_found",
    "now",
]

DEFAULT_PAGE = 50
MAX_PAGE = 200
M = TypeVar("M", bound=BaseModel)
PAGE_PARAMS = (
    Param("limit", "query", f"rows per page, 1..{MAX_PAGE} (default {DEFAULT_PAGE})",
          {"type": "integer", "minimum": 1, "maximum": MAX_PAGE}, required=False),
    Param("cursor", "query", "next_cursor of the previous page", required=False),
)  # fmt: skip


class Page(BaseModel):
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page; null on the last page")


def caller(request: web.Request) -> Principal:
    """The calling key's principal; alerts belong to a key's owner, so anonymous callers get 401."""
    principal: Principal = request[PRINCIPAL]
    if principal.key_id is None:
        raise ApiError(
            401,
            "key_required",
            "Alerts belong to an API key's owner: pass one as 'Authorization: Bearer <key>' "
            "(create one with POST /v1/keys).",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return principal


async def read_json(request: web.Request, *, empty: Any = None) -> Any:
    raw = await request.read()
    if not raw.strip():
        if empty is not None:
            return empty
        raise ApiError(400, "invalid_request", "The request needs a JSON body.")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "invalid_request", f"The request body is not valid JSON: {exc}.") from None


FieldOf = Callable[[str], str | None]


def _no_field(message: str) -> str | None:
    return None


def _path(loc: tuple[int | str, ...], tags: frozenset[str]) -> str:
    # Tagged unions add the tag as a path step ("condition.change.window", "channels.0.webhook.endpoint"):
    # the user never wrote it, so it is left out.
    kept: list[str] = []
    for i, part in enumerate(loc):
        after_union = i > 0 and (loc[i - 1] == "condition" or isinstance(loc[i - 1], int))
        if not (after_union and part in tags):
            kept.append(str(part))
    return ".".join(kept)


def field_errors(
    exc: ValidationError, field_of: FieldOf = _no_field, tags: frozenset[str] = frozenset(), at: str = ""
) -> list[dict[str, str]]:
    """One {field, message} per problem, the field as a dotted path (``condition.window``); errors of a
    whole-model check have no path, and ``field_of(message)`` may name their field from the message.
    ``at`` prefixes every path (the model is part of a larger body, e.g. "rule.")."""
    errors = []
    for error in exc.errors(include_url=False):
        message = error["msg"].removeprefix("Value error, ")
        where = _path(error["loc"], tags) or field_of(message) or "body"
        if error["type"] == "extra_forbidden":
            message = "unknown field"
        elif error["type"] not in ("value_error", "missing"):
            shown = repr(error.get("input"))
            message += f" (got {shown[:80]})"
        errors.append({"field": at + where, "message": message})
    return errors


def validated(
    model: type[M],
    data: Any,
    *,
    field_of: FieldOf = _no_field,
    tags: frozenset[str] = frozenset(),
    at: str = "",
) -> M:
    """``data`` as ``model``, or 400 invalid_request naming the fields and what is wrong with each."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = field_errors(exc, field_of, tags, at)
        message = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:3])
        raise ApiError(
            400,
            "invalid_request",
            f"Invalid {model.__name__}: {message}.",
            field=errors[0]["field"],
            errors=errors,
        ) from None


def _bad_query(name: str, problem: str) -> ApiError:
    return ApiError(400, "invalid_request", f"Query parameter {name!r} {problem}.", field=name)


def page_of(request: web.Request) -> tuple[Cursor | None, int]:
    """(after, limit) from ?cursor= and ?limit=."""
    text = request.query.get("limit", str(DEFAULT_PAGE))
    if not text.isdigit() or not 1 <= int(text) <= MAX_PAGE:
        raise _bad_query("limit", f"must be a whole number from 1 to {MAX_PAGE}, not {text[:20]!r}")
    cursor = request.query.get("cursor")
    if cursor is None:
        return None, int(text)
    try:
        moment, last = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(last, str | int):
            raise ValueError(last)
        return (utc(datetime.fromisoformat(moment)), last), int(text)
    except (binascii.Error, ValueError, TypeError):
        raise _bad_query("cursor", "is not a cursor this API issued; pass next_cursor unchanged") from None


def next_cursor(rows: list[Any], limit: int, key: Callable[[Any], Cursor]) -> str | None:
    """The cursor after the last row of a full page; None when the page is the last one."""
    if len(rows) < limit:
        return None
    moment, last = key(rows[-1])
    raw = orjson.dumps([utc(moment).isoformat(), last])
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def query_time(query: Mapping[str, str], name: str) -> datetime | None:
    """An optional ISO 8601 query parameter as an aware UTC datetime (naive means UTC)."""
    text = query.get(name)
    if text is None:
        return None
    try:
        return utc(datetime.fromisoformat(text.replace("Z", "+00:00")))
    except ValueError:
        raise _bad_query(
            name, f"is not an ISO 8601 time such as 2026-01-31T00:00:00Z: {text[:40]!r}"
        ) from None


def iso(moment: datetime | None) -> str | None:
    return None if moment is None else utc(moment).isoformat()


def not_found(what: str, ident: str) -> ApiError:
    # The same answer for another owner's id as for no such id, so ids of other owners cannot be probed.
    code = what.replace(" ", "_") + "_not_found"
    return ApiError(404, code, f"There is no {what} {ident[:80]!r} among yours.")


def now() -> datetime:
    return datetime.now(UTC)
