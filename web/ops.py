"""Operations: /healthz, /readyz, Prometheus /metrics, request timing and the JSON error middleware."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pipeline.db import ping as ping_database
from web import metrics
from web.errors import ApiError
from web.keys import ENGINE, REDIS, REPLICA
from web.rule_publisher import RULE_PUBLISHER, RulePublisher

__all__ = ["setup", "error_middleware", "readiness", "rules_check"]

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
CHECK_TIMEOUT_S = 2.0
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}


def setup(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_page)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves as ``{"error": {"code", "message"}}``; every request is timed."""
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except ApiError as exc:
        status = exc.status
        raise
    except web.HTTPException as exc:
        status = exc.status
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(
            exc.status, "http_error"
        )
        message = f"{request.method} {request.path}: {exc.reason}"
        raise ApiError(exc.status, code, message, headers=_kept_headers(exc)) from None
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        raise ApiError(
            500, "internal_error", "the server failed on this request; it has been logged"
        ) from None
    finally:
        route = request.match_info.route.resource
        name = route.canonical if route is not None else "unmatched"
        metrics.REQUEST_LATENCY.labels(request.method, name, str(status)).observe(
            time.perf_counter() - started
        )


def _kept_headers(exc: web.HTTPException) -> dict[str, str]:
    return {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}


async def healthz(request: web.Request) -> web.Response:
    """The process serves requests (liveness); says nothing about its dependencies."""
    return web.json_response({"status": "ok"})


async def readiness(app: web.Application) -> dict[str, Any]:
    """Kafka (the replica reads and has caught up), the startup reconciliation of ``alerts.rules``, Redis
    and the SQL store, each with a reason."""
    replica = app[REPLICA]
    checks: dict[str, Any] = {
        "kafka": {"ok": replica.running, "lag": replica.lag()},
        "replica": {"ok": replica.caught_up, "rows": {c: len(s) for c, s in replica.live.items()}},
    }
    if RULE_PUBLISHER in app:
        checks["rules"] = rules_check(app[RULE_PUBLISHER])
    try:
        await asyncio.wait_for(app[REDIS].ping(), CHECK_TIMEOUT_S)
        checks["redis"] = {"ok": True}
    except Exception as exc:  # noqa: BLE001  (any failure means "not ready", with its reason)
        checks["redis"] = {"ok": False, "error": str(exc) or type(exc).__name__}
    try:
        await asyncio.wait_for(ping_database(app[ENGINE]), CHECK_TIMEOUT_S)
        checks["database"] = {"ok": True}
    except Exception as exc:  # noqa: BLE001
        checks["database"] = {"ok": False, "error": str(exc) or type(exc).__name__}
    return checks


def rules_check(publisher: RulePublisher) -> dict[str, Any]:
    """Ready once this sidecar's startup reconciliation made ``alerts.rules`` equal to PostgreSQL: like the
    replica's catch-up, a startup duty done once. Repairs after a failed publish are reported, not gated on:
    they wait for Kafka, which the kafka check covers, and gating on them would flap the instance."""
    check: dict[str, Any] = {
        "ok": publisher.reconciled.is_set(),
        "pending_repairs": len(publisher.pending_repairs),
    }
    if not check["ok"]:
        check["error"] = publisher.reconcile_error or "alerts.rules is being reconciled with PostgreSQL"
    return check


async def readyz(request: web.Request) -> web.Response:
    checks = await readiness(request.app)
    ready = all(check["ok"] for check in checks.values())
    return web.json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)


async def metrics_page(request: web.Request) -> web.Response:
    replica = request.app[REPLICA]
    metrics.REPLICA_LAG.set(replica.lag())
    for channel, state in replica.live.items():
        metrics.REPLICA_ROWS.labels(channel).set(len(state))
    # aiohttp refuses a charset inside content_type; the exposition format is UTF-8 anyway.
    return web.Response(body=generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])
