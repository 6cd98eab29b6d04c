"""Webhook delivery the Standard Webhooks way (https://www.standardwebhooks.com): signed POSTs to the
owner's endpoint, with the SSRF guard applied to the addresses actually connected to."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import socket
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
from aiohttp.abc import AbstractResolver, ResolveResult

from pipeline.alerting.attempt import EXCERPT_CHARS, AttemptResult, Outgoing
from pipeline.alerting.targets import TargetError, check_resolved_host, validate_webhook_url
from pipeline.settings import Settings

__all__ = [
    "SECRET_PREFIX",
    "secret_key",
    "sign",
    "active_secrets",
    "signature_header",
    "webhook_body",
    "WebhookSender",
]

SECRET_PREFIX = "whsec_"
USER_AGENT = "llamastream-webhooks/1"


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret (the prefix is optional, padding too)."""
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except binascii.Error as err:
        raise ValueError("a webhook secret is 'whsec_' followed by base64") from err
    if not key:
        raise ValueError("a webhook secret must not be empty")
    return key


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def _parse_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, str) and value:
        parsed = datetime.fromisoformat(value)
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


def active_secrets(secrets: Iterable[Mapping[str, Any]], now: datetime) -> list[str]:
    """The secrets to sign with now: every one not past its ``expires_at`` (two during a rotation)."""
    active = []
    for entry in secrets:
        expires = _parse_time(entry.get("expires_at"))
        if isinstance(entry.get("secret"), str) and (expires is None or expires > now):
            active.append(entry["secret"])
    return active


def signature_header(secrets: Iterable[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """Space-separated signatures, one per active secret: a receiver holding either one verifies."""
    return " ".join(sign(secret, msg_id, timestamp, body) for secret in secrets)


def webhook_body(outgoing: Outgoing) -> bytes:
    """The request body: the Standard Webhooks envelope around the notice (``data``)."""
    payload = outgoing.payload
    return orjson.dumps(
        {
            "type": f"alert.{payload.get('status', 'firing')}",
            "timestamp": outgoing.created_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "data": payload,
        }
    )


class _GuardedResolver(AbstractResolver):
    """Resolves through the SSRF guard, so a name cannot resolve to a private address between the check
    before the request and the connection (DNS rebinding)."""

    def __init__(self, allow_private: bool) -> None:
        self.allow_private = allow_private

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        addresses = await check_resolved_host(host, port, self.allow_private)
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address in addresses
        ]

    async def close(self) -> None:
        return None


class WebhookSender:
    """Posts notifications to webhook endpoints; one connection pool for all of them."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                resolver=_GuardedResolver(self.settings.webhook_allow_private),
                use_dns_cache=False,
                limit=100,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=self.settings.webhook_timeout_s),
                headers={"User-Agent": USER_AGENT},
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(self, outgoing: Outgoing) -> AttemptResult:
        endpoint = outgoing.endpoint  # read, owner-checked, when the notification was claimed
        if endpoint is None:
            return AttemptResult(
                ok=False,
                target=f"webhook endpoint {outgoing.target}",
                error=f"webhook endpoint {outgoing.target!r} no longer exists",
                permanent=True,
            )
        if endpoint.disabled:
            return AttemptResult(ok=False, target=endpoint.url, held=True)
        return await self.post(endpoint.url, endpoint.secrets, outgoing)

    async def post(self, url: str, secrets: list[dict[str, Any]], outgoing: Outgoing) -> AttemptResult:
        """One signed POST; every outcome, refusals and timeouts included, is a result, never a raise."""
        body = webhook_body(outgoing)
        timestamp = int(time.time())
        signing = active_secrets(secrets, datetime.now(UTC))
        headers = {
            "Content-Type": "application/json",
            "webhook-id": outgoing.id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature_header(signing, outgoing.id, timestamp, body),
        }
        # Signatures are not secrets, but the log needs only how many were sent.
        logged = headers | {"webhook-signature": " ".join("v1,<redacted>" for _ in signing)}
        started = time.perf_counter()

        def result(**fields: Any) -> AttemptResult:
            latency = (time.perf_counter() - started) * 1000
            return AttemptResult(target=url, request_headers=logged, latency_ms=latency, **fields)

        if not signing:
            return result(ok=False, error="the endpoint has no active signing secret; rotate one in")
        try:
            host, port = validate_webhook_url(url)
            # Checked here for addresses given literally (aiohttp does not resolve those) and by the
            # resolver for names, on the addresses the connection then uses.
            await check_resolved_host(host, port, self.settings.webhook_allow_private)
            async with self._client().post(
                url, data=body, headers=headers, allow_redirects=False
            ) as response:
                excerpt = (await response.content.read(EXCERPT_CHARS * 4)).decode("utf-8", "replace")
                status = response.status
                location = response.headers.get("Location", "")
        except TargetError as err:
            return result(ok=False, error=f"target refused: {err}")
        except TimeoutError:
            return result(ok=False, error=f"timed out after {self.settings.webhook_timeout_s:g}s")
        except (aiohttp.ClientError, OSError, asyncio.IncompleteReadError) as err:
            return result(ok=False, error=f"{type(err).__name__}: {err}"[:EXCERPT_CHARS])
        excerpt = excerpt[:EXCERPT_CHARS]
        if 200 <= status < 300:
            return result(ok=True, status_code=status, response_excerpt=excerpt)
        if status == 410:
            error = "the receiver answered 410 Gone: the endpoint is disabled"
            return result(ok=False, status_code=status, response_excerpt=excerpt, error=error, gone=True)
        if 300 <= status < 400:
            error = f"redirect to {location[:300]!r} not followed; register the final URL"
            return result(ok=False, status_code=status, response_excerpt=excerpt, error=error)
        return result(ok=False, status_code=status, response_excerpt=excerpt, error=f"HTTP {status}")
