"""``python -m web``: run the sidecar (REST, WebSocket, dashboard) on LLAMA_WEB_HOST:LLAMA_WEB_PORT."""

from __future__ import annotations

import gc
import logging

from aiohttp import web

from pipeline.settings import get_settings
from web.app import create_app

__all__ = ["main"]

# Allocations between young collections (CPython's default is 700). The sidecar holds every connection
# and the replica in Python objects, so each object promoted to the old generation brings the next
# full collection (a walk of all of them, ~1 s at 15,000 connections) closer; collecting the young
# generation less often lets the many short-lived objects of a message die before they are promoted.
YOUNG_COLLECTION_EVERY = 20_000


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = get_settings()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_EVERY, middle, old)
    app = create_app(settings)
    app.on_startup.append(_freeze_startup_objects)
    web.run_app(app, host=settings.web_host, port=settings.web_port, access_log=None)


async def _freeze_startup_objects(_app: web.Application) -> None:
    """Modules, classes and the app's wiring live as long as the process: full collections skip them."""
    gc.collect()
    gc.freeze()


if __name__ == "__main__":
    main()
