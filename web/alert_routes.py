"""The alerts REST API (docs/alerts.md, "API"): rules, silences, webhook endpoints, deliveries, history and
back-tests, every one owned by the calling key's owner; and the publisher of rules to ``alerts.rules``."""

from __future__ import annotations

from aiohttp import web

from web import alert_rules_routes, backtest_routes, delivery_routes, openapi, silence_routes, webhook_routes
from web.openapi import Operation
from web.rule_publisher import rule_publisher_ctx

__all__ = ["ROUTES", "setup"]

ROUTES: tuple[Operation, ...] = (
    *alert_rules_routes.ROUTES,
    *silence_routes.ROUTES,
    *webhook_routes.ROUTES,
    *delivery_routes.ROUTES,
    *backtest_routes.ROUTES,
)


def setup(app: web.Application) -> None:
    """The routes and the rule publisher (after ENGINE: create_app's resources come first)."""
    app.cleanup_ctx.append(rule_publisher_ctx)
    for op in ROUTES:
        assert op.handler is not None
        app.router.add_route(op.method, op.path, op.handler)
    openapi.setup(app, ROUTES)
