"""Fixtures of the delivery tests: settings for a worker that delivers to loopback receivers quickly.

A module that needs other settings (SMTP, endpoint health, rare commits) overrides ``settings`` with
``delivery_settings(...)``; ``engine`` (tests/integration/alerts/conftest.py) follows whichever it gets."""

from __future__ import annotations

import pytest

from pipeline.settings import Settings
from tests.integration.alerting import delivery_settings


@pytest.fixture
def settings() -> Settings:
    return delivery_settings()
