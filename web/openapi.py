"""The OpenAPI 3.1 document of the sidecar, built from the pydantic models of its handlers; /docs lists it."""

from __future__ import annotations

import html
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from pydantic.json_schema import JsonSchemaMode

from web.key_routes import CreateKeyBody

__all__ = ["Handler", "Param", "Operation", "ErrorDetail", "ErrorBody", "build_document", "document", "setup"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_REF = "#/components/schemas/{model}"
ABOUT = (
    "Real-time DeFi analytics: DeFiLlama-compatible REST, queries and streams. The free tier (no key, or a "
    "free key) sees every value LLAMA_FREE_TIER_DELAY_S (5 minutes) late."
)


class ErrorDetail(BaseModel):
    # Some errors add context (the filter's position, the offending coin): extra keys are allowed.
    model_config = ConfigDict(extra="allow")
    code: str
    message: str


class ErrorBody(BaseModel):
    """Every error response: ``{"error": {"code", "message", ...}}``."""

    error: ErrorDetail


@dataclass(frozen=True)
class Param:
    name: str
    where: Literal["path", "query", "header"]
    description: str
    schema: Mapping[str, Any] = field(default_factory=lambda: {"type": "string"})
    required: bool = True


@dataclass(frozen=True)
class Operation:
    """One route as the document describes it; ``handler`` is set when the describing module serves it."""

    method: str
    path: str
    summary: str
    tag: str
    response: Any = None  # type of the JSON success body: a model, list[Model], Model | Other
    status: int = 200
    # A success body that is not JSON (Prometheus text, HTML): media type -> schema.
    other_content: Mapping[str, Mapping[str, Any]] | None = None
    request: Any = None  # type of the JSON request body
    params: Sequence[Param] = ()
    # Further non-error responses with a JSON body: status -> (description, type), e.g. /readyz's 503.
    responses: Mapping[int, tuple[str, Any]] = field(default_factory=dict)
    errors: Mapping[int, str] = field(default_factory=dict)  # status -> description; the body is ErrorBody
    # "optional": anonymous callers get the free tier; "required": a key; "none": public, not rate limited.
    auth: Literal["optional", "required", "none"] = "optional"
    description: str = ""
    handler: Handler | None = None

    @property
    def operation_id(self) -> str:
        words = self.path.replace("{", "").replace("}", "").replace(".", "_").strip("/").split("/")
        return "_".join([self.method.lower(), *words])


SECURITY_SCHEMES: dict[str, Any] = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "API key: `Authorization: Bearer <key>`"},
    "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    "apiKeyQuery": {"type": "apiKey", "in": "query", "name": "api_key"},
}
_WITH_KEY: list[dict[str, list[str]]] = [{"bearer": []}, {"apiKeyHeader": []}, {"apiKeyQuery": []}]
_ERROR_CONTENT = {"application/json": {"schema": {"$ref": _REF.format(model="ErrorBody")}}}
_INVALID_KEY = {
    "description": "The API key is malformed, unknown or revoked (invalid_key)",
    "content": _ERROR_CONTENT,
}
_RATE_LIMITED = {
    "description": "The caller's tier allows no more requests now (rate_limited); retry after Retry-After.",
    "headers": {"Retry-After": {"description": "seconds", "schema": {"type": "integer", "minimum": 0}}},
    "content": _ERROR_CONTENT,
}
_ERROR: TypeAdapter[ErrorBody] = TypeAdapter(ErrorBody)
Key = tuple[str, str]  # (operation id, which body)
Schemas = Mapping[tuple[Key, JsonSchemaMode], Any]


def _json(schema: Any) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _operation(op: Operation, schemas: Schemas) -> dict[str, Any]:
    oid = op.operation_id
    success: dict[str, Any] = {"description": op.summary}
    if op.response is not None:
        success["content"] = _json(schemas[((oid, "response"), "serialization")])
    elif op.other_content:
        success["content"] = {media: {"schema": dict(schema)} for media, schema in op.other_content.items()}
    responses: dict[str, Any] = {str(op.status): success}
    for status, (text, _) in op.responses.items():
        body = _json(schemas[((oid, str(status)), "serialization")])
        responses[str(status)] = {"description": text, "content": body}
    for status, text in op.errors.items():
        responses[str(status)] = {"description": text, "content": _ERROR_CONTENT}
    if op.auth != "none":
        responses.setdefault("401", _INVALID_KEY)
        responses["429"] = _RATE_LIMITED
    # An empty requirement ({}) makes the key optional: anonymous callers are served as the free tier.
    security = [] if op.auth == "none" else ([{}] if op.auth == "optional" else []) + _WITH_KEY
    doc: dict[str, Any] = {"operationId": oid, "summary": op.summary, "tags": [op.tag], "security": security}
    doc["responses"] = dict(sorted(responses.items()))
    if op.description:
        doc["description"] = op.description
    if op.params:
        doc["parameters"] = [
            {"name": p.name, "in": p.where, "description": p.description,
             "required": p.required or p.where == "path", "schema": dict(p.schema)}
            for p in op.params
        ]  # fmt: skip
    if op.request is not None:
        doc["requestBody"] = {"required": True, "content": _json(schemas[((oid, "request"), "validation")])}
    return doc


def build_document(operations: Iterable[Operation], *, version: str = "0.1.0") -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``operations`` (JSON Schema 2020-12 schemas, as pydantic writes them)."""
    ops = list(operations)
    # Responses are what handlers write (serialization), request bodies what they read (validation).
    inputs: list[tuple[Key, JsonSchemaMode, TypeAdapter[Any]]] = [(("", ""), "serialization", _ERROR)]
    for op in ops:
        oid = op.operation_id
        if op.response is not None:
            inputs.append(((oid, "response"), "serialization", TypeAdapter(op.response)))
        if op.request is not None:
            inputs.append(((oid, "request"), "validation", TypeAdapter(op.request)))
        inputs += [((oid, str(s)), "serialization", TypeAdapter(t)) for s, (_, t) in op.responses.items()]
    schemas, defs = TypeAdapter.json_schemas(inputs, ref_template=_REF)
    paths: dict[str, dict[str, Any]] = {}
    for op in ops:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op, schemas)
    return {
        "openapi": "3.1.0",
        "info": {"title": "llamastream", "version": version, "description": ABOUT},
        "paths": dict(sorted(paths.items())),
        "components": {"schemas": defs.get("$defs", {}), "securitySchemes": SECURITY_SCHEMES},
    }


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    ready: bool
    checks: dict[str, dict[str, Any]] = Field(
        description="kafka, replica, redis, database, rules (alert rules reconciled): {ok, ...reason}"
    )


class UsageDay(BaseModel):
    date: str
    requests: int
    messages: int


class Usage(BaseModel):
    key_id: str
    owner: str
    tier: str
    limits: dict[str, int | bool]
    days: list[UsageDay] = Field(description="the last 30 UTC days, oldest first")
    totals: dict[str, int]


class KeyInfo(BaseModel):
    id: str
    owner: str
    tier: str
    label: str
    created_at: str | None
    revoked_at: str | None


class CreatedKey(KeyInfo):
    key: str = Field(description="the whole key; shown this once, only its hash is stored")


class KeyList(BaseModel):
    keys: list[KeyInfo]


def fallback_operations() -> tuple[Operation, ...]:
    """Routes of modules that do not describe themselves (web.ops, web.usage, web.key_routes, web.stream);
    a module calling ``setup(app, its_routes)`` replaces its entries here."""
    key = "A key of another owner (forbidden), or a non-free tier without the admin token (admin_required)."
    owner = Param("owner", "query", "whose keys (admin: any owner; a key: its own)", required=False)
    return (
        Operation("GET", "/healthz", "Liveness: the process serves requests", "ops", response=Health,
                  auth="none"),
        Operation("GET", "/readyz", "Readiness: replica caught up, rules reconciled, Redis and SQL up", "ops",
                  response=Readiness, responses={503: ("Not ready; the failing checks say why", Readiness)},
                  auth="none"),
        Operation("GET", "/metrics", "Prometheus metrics", "ops", auth="none",
                  other_content={"text/plain": {"type": "string"}}),
        Operation("GET", "/v1/usage", "Requests and WebSocket messages of the caller's key, per UTC day",
                  "keys", response=Usage, auth="required", errors={503: "usage_unavailable; retry shortly."}),
        Operation("POST", "/v1/keys", "Create a key (anonymous: a free key for a new owner)", "keys",
                  response=CreatedKey, status=201, request=CreateKeyBody,
                  errors={400: "invalid_request (names the field)", 403: key, 409: "owner_taken"}),
        Operation("GET", "/v1/keys", "The caller's keys (the admin's: any owner's)", "keys", response=KeyList,
                  params=(owner,), auth="required", errors={403: key}),
        Operation("DELETE", "/v1/keys/{key_id}", "Revoke a key, on every sidecar at once", "keys", status=204,
                  params=(Param("key_id", "path", "the key's public id (lls_...)"),), auth="required",
                  errors={404: "key_not_found: no such key among the caller's"}),
        Operation("GET", "/v1/stream", "WebSocket: subscribe to channels with filters (docs/websocket.md)",
                  "stream", status=101, errors={400: "Not a WebSocket upgrade request (http_error)."}),
    )  # fmt: skip


@dataclass
class _Registry:
    operations: list[Operation]
    body: bytes | None = None


_REGISTRY = web.AppKey("openapi_registry", _Registry)


def document(app: web.Application) -> dict[str, Any]:
    """The document of every operation described on ``app``; a module's own description beats a fallback."""
    described = app[_REGISTRY].operations
    seen = {(op.method, op.path) for op in described}
    return build_document(
        [*described, *(op for op in fallback_operations() if (op.method, op.path) not in seen)]
    )


def _body(app: web.Application) -> bytes:
    registry = app[_REGISTRY]
    registry.body = registry.body or orjson.dumps(document(app))
    return registry.body


async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(body=_body(request.app), content_type="application/json")


def _cells(method: str, path: str, op: dict[str, Any]) -> str:
    params = ", ".join(f"{p['name']} ({p['in']})" for p in op.get("parameters", []))
    cells = (method.upper(), path, op["summary"], params, ", ".join(op["responses"]))
    return "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in cells) + "</tr>"


async def docs_page(request: web.Request) -> web.Response:
    """A plain listing of the document: no script or stylesheet from elsewhere (the host may be offline)."""
    doc = orjson.loads(_body(request.app))
    rows = "".join(_cells(m, path, op) for path, methods in doc["paths"].items() for m, op in methods.items())
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>llamastream API</title></head><body>"
        f"<h1>llamastream API</h1><p>{html.escape(ABOUT)}</p><p>Machine-readable: <a href='/openapi.json'>"
        "/openapi.json</a> (OpenAPI 3.1). Authenticate with <code>Authorization: Bearer &lt;key&gt;</code>, "
        "<code>X-API-Key</code> or <code>?api_key=</code>.</p><table border='1'><tr><th>method</th>"
        f"<th>path</th><th>what</th><th>parameters</th><th>responses</th></tr>{rows}</table></body></html>"
    )
    return web.Response(text=page, content_type="text/html")


OWN: tuple[Operation, ...] = (
    Operation("GET", "/openapi.json", "This API's OpenAPI 3.1 document", "meta", auth="none",
              other_content={"application/json": {"type": "object"}}, handler=openapi_json),
    Operation("GET", "/docs", "The API listed as an HTML page", "meta", auth="none",
              other_content={"text/html": {"type": "string"}}, handler=docs_page),
)  # fmt: skip


def setup(app: web.Application, operations: Iterable[Operation] = ()) -> None:
    """Describe ``operations`` in the app's document; the first call also serves /openapi.json and /docs."""
    registry = app.get(_REGISTRY)
    if registry is None:
        registry = app[_REGISTRY] = _Registry(list(OWN))
        for op in OWN:
            assert op.handler is not None
            app.router.add_get(op.path, op.handler)
        # Built before serving, so a model that cannot be described fails the start, not a request.
        app.on_startup.append(_build)
    registry.operations.extend(operations)


async def _build(app: web.Application) -> None:
    _body(app)
