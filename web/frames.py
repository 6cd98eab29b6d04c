"""Server-to-client WebSocket text frames (RFC 6455, section 5.2), written straight to the transport.

aiohttp's ``send_frame`` is a coroutine, so every message would cost a task switch on the writer's side.
The hub hands each update to thousands of connections per second; writing a ready frame to a socket
that has room is a synchronous ``transport.write``, and the writer task is only needed when it has not.
Server frames are never masked, and /v1/stream negotiates no compression (see web/stream.py), so a
frame is a 2, 4 or 10 byte header followed by the payload.
"""

from __future__ import annotations

import struct

__all__ = ["text_frame"]

_FIN_TEXT = 0x81  # FIN bit, opcode 1 (text)
_SHORT = struct.Struct("!BB")
_MEDIUM = struct.Struct("!BBH")
_LONG = struct.Struct("!BBQ")


def text_frame(payload: bytes) -> bytes:
    """One unfragmented, unmasked text frame carrying ``payload`` (UTF-8 JSON)."""
    length = len(payload)
    if length < 126:
        header = _SHORT.pack(_FIN_TEXT, length)
    elif length < 65536:
        header = _MEDIUM.pack(_FIN_TEXT, 126, length)
    else:
        header = _LONG.pack(_FIN_TEXT, 127, length)
    return header + payload
