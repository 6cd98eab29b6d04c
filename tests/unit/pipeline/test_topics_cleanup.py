"""Deleting a run's topics takes whole tags only: a short marker would match most of the broker."""

from __future__ import annotations

import asyncio

import pytest

from pipeline.topics import delete_topics_containing


@pytest.mark.parametrize("markers", ["b", ["bench1121164838", "t"], ["abc"]])
def test_markers_shorter_than_a_tag_are_refused_before_the_broker_is_asked(markers: object) -> None:
    # Nothing listens on port 1: the refusal comes before any connection.
    with pytest.raises(ValueError, match="at least 6 characters"):
        asyncio.run(delete_topics_containing("127.0.0.1:1", markers))  # type: ignore[arg-type]
