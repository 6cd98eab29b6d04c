"""The OpenAPI document matches the routes ``create_app`` registers, and every schema in it is sound."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
import schemathesis
from aiohttp import web
from schemathesis.core.result import Ok

from pipeline.settings import Settings
from web import openapi
from web.app import create_app


@pytest.fixture(scope="module")
def app() -> web.Application:
    # Only registers routes and resources: Redis, SQL and Kafka are reached at startup, which never happens.
    return create_app(Settings())


@pytest.fixture(scope="module")
def document(app: web.Application) -> dict[str, Any]:
    return openapi.document(app)


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, op) for path, ops in document["paths"].items() for method, op in ops.items()
    ]


def test_document_describes_exactly_the_registered_routes(
    app: web.Application, document: dict[str, Any]
) -> None:
    # aiohttp adds HEAD beside every GET by itself.
    registered = {
        (r.method, r.resource.canonical) for r in app.router.routes() if r.method != "HEAD" and r.resource
    }
    documented = {(method, path) for method, path, _ in operations(document)}
    assert documented - registered == set(), "documented but not served"
    assert registered - documented == set(), "served but not documented: describe it (web.openapi.Operation)"


def test_every_schema_is_valid_json_schema(document: dict[str, Any]) -> None:
    assert document["openapi"] == "3.1.0"
    for schema in document["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)
    # Schemathesis resolves every operation's parameters, bodies and references.
    for result in schemathesis.openapi.from_dict(document).get_all_operations():
        assert isinstance(result, Ok), result.err()


def test_errors_share_one_shape_and_limited_routes_document_429(document: dict[str, Any]) -> None:
    error_ref = {"$ref": "#/components/schemas/ErrorBody"}
    assert set(document["components"]["schemas"]["ErrorBody"]["required"]) == {"error"}
    for method, path, op in operations(document):
        for status, response in op["responses"].items():
            if int(status) >= 400 and not (path == "/readyz" and status == "503"):
                assert response["content"]["application/json"]["schema"] == error_ref, (method, path, status)
        if op["security"]:
            assert "Retry-After" in op["responses"]["429"]["headers"], (method, path)
            assert "401" in op["responses"], (method, path)
        else:
            assert "429" not in op["responses"], (method, path)


def test_security_schemes_and_optional_keys(document: dict[str, Any]) -> None:
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearer"] == {**schemes["bearer"], "type": "http", "scheme": "bearer"}
    assert (schemes["apiKeyHeader"]["in"], schemes["apiKeyHeader"]["name"]) == ("header", "X-API-Key")
    assert (schemes["apiKeyQuery"]["in"], schemes["apiKeyQuery"]["name"]) == ("query", "api_key")
    protocols = document["paths"]["/protocols"]["get"]
    # Anonymous callers are served (as the free tier): the empty requirement comes first.
    assert protocols["security"][0] == {}
    assert {} not in document["paths"]["/v1/usage"]["get"]["security"]
    assert document["paths"]["/healthz"]["get"]["security"] == []


def test_defillama_responses_come_from_the_models(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    ok = document["paths"]["/protocols"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/ProtocolList"}
    summary = schemas["ProtocolSummary"]
    assert {"name", "slug", "chains", "tvl", "chainTvls", "change_1d", "as_of", "stale"} <= set(
        summary["required"]
    )
    coins = document["paths"]["/prices/current/{coins}"]["get"]
    assert set(coins["responses"]) == {"200", "400", "401", "429"}
    assert coins["parameters"][0]["in"] == "path" and coins["parameters"][0]["required"] is True
