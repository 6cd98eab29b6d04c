"""How the full-list endpoints read Accept-Encoding."""

from __future__ import annotations

from web.list_bodies import accepts_gzip


def test_accept_encoding_is_read_as_rfc_9110_says() -> None:
    assert accepts_gzip("gzip") and accepts_gzip("deflate, gzip;q=0.5") and accepts_gzip("*")
    assert accepts_gzip("x-gzip") and accepts_gzip("GZIP ; Q=1")
    assert not accepts_gzip("") and not accepts_gzip("identity") and not accepts_gzip("br")
    assert not accepts_gzip("gzip;q=0") and not accepts_gzip("*, gzip; q=0")
