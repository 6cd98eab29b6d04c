"""Full REST lists (/protocols, /v2/chains, /pools) as sent: serialised once per view and second, with an
ETag for conditional requests and a gzip copy for clients that take it."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
from dataclasses import dataclass

from aiohttp import web

__all__ = ["LIST_REUSE_S", "GZIP_LEVEL", "ListBody", "send_list", "accepts_gzip"]

# Full lists take tens of milliseconds to build (6,000+ protocols): one body serves every caller of the same
# view while it is unchanged, and for at most LIST_REUSE_S while it changes (a stream never pauses).
LIST_REUSE_S = 1.0
# Compressed once per body, on first demand: level 1 is 5x smaller than the JSON at a fifth of level 6's cost.
GZIP_LEVEL = 1


@dataclass
class ListBody:
    """One serialised full list, its ETag and (made on first demand) its gzip encoding."""

    version: tuple[int, int, int]
    built_at: float
    raw: bytes
    etag: str = ""
    _gzipped: asyncio.Future[bytes] | None = None

    def __post_init__(self) -> None:
        self.etag = '"' + hashlib.blake2b(self.raw, digest_size=12).hexdigest() + '"'

    async def gzip(self) -> bytes:
        """Compressed in a thread (zlib lets go of the GIL: ~9 ms of /protocols kept off the event loop),
        once, however many requests ask meanwhile."""
        if self._gzipped is None:
            self._gzipped = asyncio.ensure_future(
                asyncio.to_thread(gzip.compress, self.raw, compresslevel=GZIP_LEVEL, mtime=0)
            )
        return await asyncio.shield(self._gzipped)


async def send_list(request: web.Request, body: ListBody) -> web.Response:
    """The body as the client accepts it: 304 when it has it already, gzip when it takes gzip."""
    headers = {"Vary": "Accept-Encoding"}
    gzipped = accepts_gzip(request.headers.get("Accept-Encoding", ""))
    # One ETag per encoding (a strong validator names exact bytes); a client may send either back.
    etag = body.etag[:-1] + '-gzip"' if gzipped else body.etag
    headers["ETag"] = etag
    if _matches(request.headers.get("If-None-Match"), body.etag):
        return web.Response(status=304, headers=headers)
    if gzipped:
        headers["Content-Encoding"] = "gzip"
        return web.Response(body=await body.gzip(), content_type="application/json", headers=headers)
    return web.Response(body=body.raw, content_type="application/json", headers=headers)


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an Accept-Encoding header allows gzip (named, or ``*``, without q=0)."""
    allowed: dict[str, bool] = {}
    for item in accept_encoding.lower().split(","):
        coding, _, params = item.strip().partition(";")
        quality = params.replace(" ", "").removeprefix("q=")
        try:
            allowed[coding.strip()] = not params or float(quality) > 0
        except ValueError:
            allowed[coding.strip()] = True
    return allowed.get("gzip", allowed.get("x-gzip", allowed.get("*", False)))


def _matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    bare = etag.strip('"')
    for tag in if_none_match.split(","):
        value = tag.strip().removeprefix("W/").strip('"')
        if value in (bare, bare + "-gzip"):
            return True
    return False
