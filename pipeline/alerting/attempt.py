"""What one delivery attempt reports back to the delivery loop, whatever the channel."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

__all__ = ["AttemptResult", "Endpoint", "Outgoing", "Sender", "EXCERPT_CHARS"]

# Response bodies and errors are kept this long in the delivery log.
EXCERPT_CHARS = 1000


@dataclass(frozen=True)
class Endpoint:
    """A webhook endpoint as the sender needs it."""

    url: str
    secrets: list[dict[str, Any]]  # [{"secret": "whsec_...", "expires_at": iso | None}, ...]
    disabled: bool


@dataclass(frozen=True)
class Outgoing:
    """A claimed outbox row, as a sender needs it."""

    id: str  # the webhook-id / Message-ID: the same on every retry
    owner: str
    target_type: str
    target: str
    payload: Mapping[str, Any]
    created_at: datetime
    attempt: int  # 1 for the first attempt
    replay: bool = False  # sent again on the owner's request (logged as such)
    # Webhooks: the endpoint, read when the notification was claimed (None: it does not exist).
    endpoint: Endpoint | None = None


@dataclass(frozen=True)
class AttemptResult:
    ok: bool
    target: str  # what was contacted: the URL, the address, the topic
    status_code: int | None = None
    latency_ms: float = 0.0
    error: str | None = None
    response_excerpt: str | None = None
    # What was sent, secrets and signatures left out.
    request_headers: dict[str, str] = field(default_factory=dict)
    # Retrying cannot help (a permanent SMTP refusal, a deleted endpoint): give up now.
    permanent: bool = False
    # The receiver asked us to stop (HTTP 410 Gone): disable the endpoint now.
    gone: bool = False
    # The endpoint is disabled: keep the notification until it is enabled again; not an attempt.
    held: bool = False


class Sender(Protocol):
    """One notification channel (a notifier, in Alertmanager's words): one module, one registry line."""

    async def send(self, outgoing: Outgoing) -> AttemptResult: ...

    async def close(self) -> None: ...
