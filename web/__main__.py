"""``python -m web``: run the sidecar (REST, WebSocket, dashboard) on LLAMA_WEB_HOST:LLAMA_WEB_PORT."""

from __future__ import annotations

import logging

from aiohttp import web

from pipeline.settings import get_settings
from web.app import create_app

__all__ = ["main"]


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = get_settings()
    web.run_app(create_app(settings), host=settings.web_host, port=settings.web_port, access_log=None)


if __name__ == "__main__":
    main()
