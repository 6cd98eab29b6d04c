"""Shared fixtures: where the real data lives."""

from __future__ import annotations

from pathlib import Path

import pytest

DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    # The data README asks a missing file to fail loudly, never to skip.
    assert DATA_DIR.is_dir(), f"real data folder not found at {DATA_DIR}; clone the project beside shared/"
    return DATA_DIR
