"""Text frames the hub writes straight to sockets, read back by the RFC 6455 rules (section 5.2)."""

from __future__ import annotations

import struct

import pytest

from web.frames import text_frame


def read_frame(frame: bytes) -> tuple[bool, int, bool, bytes]:
    """(fin, opcode, masked, payload) of one frame, as a client decodes it."""
    first, second = frame[0], frame[1]
    length, offset = second & 0x7F, 2
    if length == 126:
        (length,), offset = struct.unpack("!H", frame[2:4]), 4
    elif length == 127:
        (length,), offset = struct.unpack("!Q", frame[2:10]), 10
    payload = frame[offset:]
    assert len(payload) == length, "the header's length is the payload's"
    return bool(first & 0x80), first & 0x0F, bool(second & 0x80), payload


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 200_000])
def test_each_length_encoding_round_trips(size: int) -> None:
    payload = b"a" * size
    fin, opcode, masked, body = read_frame(text_frame(payload))
    assert (fin, opcode, masked) == (True, 1, False)
    assert body == payload


def test_the_smallest_encoding_is_used() -> None:
    assert len(text_frame(b"x" * 125)) == 125 + 2
    assert len(text_frame(b"x" * 126)) == 126 + 4
    assert len(text_frame(b"x" * 65536)) == 65536 + 10
