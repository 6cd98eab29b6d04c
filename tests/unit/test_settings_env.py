"""The environment the integration tests start workers with reproduces the settings exactly."""

from __future__ import annotations

import os

import pytest
from pydantic import SecretStr

from pipeline.settings import Settings
from tests.integration.support import settings_env


def test_a_child_process_reads_back_the_same_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(
        _env_file=None,
        topic_prefix="t1.",
        webhook_allow_private=True,
        smtp_password=SecretStr("p@ss"),
        smtp_username=None,
        admin_token=None,
    )
    monkeypatch.setenv("LLAMA_SMTP_USERNAME", "inherited")  # an outer value must not leak into the child
    env = settings_env(settings)
    assert "LLAMA_SMTP_USERNAME" not in env and "LLAMA_ADMIN_TOKEN" not in env  # None: left out, not "None"
    assert env["LLAMA_SMTP_PASSWORD"] == "p@ss"  # the secret, not its mask
    assert env["LLAMA_WEBHOOK_ALLOW_PRIVATE"] == "true"
    # The child process: exactly that environment.
    for name in [name for name in os.environ if name not in env]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    child = Settings(_env_file=None)
    assert child.model_dump() == settings.model_dump()
    assert child.smtp_password is not None and child.smtp_password.get_secret_value() == "p@ss"
