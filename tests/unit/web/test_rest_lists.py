"""How the full-list endpoints read Accept-Encoding."""

from __future__ import annotations

from web import rest


def test_accept_encoding_is_read_as_rfc_9110_says() -> None:
    assert rest.accepts_gzip("gzip") and rest.accepts_gzip("deflate, gzip;q=0.5") and rest.accepts_gzip("*")
    assert rest.accepts_gzip("x-gzip") and rest.accepts_gzip("GZIP ; Q=1")
    assert not rest.accepts_gzip("") and not rest.accepts_gzip("identity") and not rest.accepts_gzip("br")
    assert not rest.accepts_gzip("gzip;q=0") and not rest.accepts_gzip("*, gzip; q=0")
