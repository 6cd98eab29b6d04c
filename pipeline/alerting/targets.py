"""Webhook target checks: an https/http URL whose host resolves only to public addresses, unless the
deployment explicitly allows private ranges (tests, on-premises receivers).

Checked twice: when an endpoint is registered (a clear error for the user) and again right before each
request, on the addresses actually resolved then, because DNS can change between the two (rebinding)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

__all__ = ["TargetError", "validate_webhook_url", "check_resolved_host"]

MAX_URL_LENGTH = 2000


class TargetError(ValueError):
    """The URL is not an acceptable webhook target; the message says why."""


def validate_webhook_url(url: str) -> tuple[str, int]:
    """The URL's host and port if its form is acceptable (scheme, host, no credentials, length)."""
    if len(url) > MAX_URL_LENGTH:
        raise TargetError(f"url is longer than {MAX_URL_LENGTH} characters")
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http"):
        raise TargetError(f"url scheme must be https or http, not {parts.scheme or 'missing'!r}")
    if not parts.hostname:
        raise TargetError("url has no host")
    if parts.username or parts.password:
        raise TargetError("url must not carry credentials; the signature authenticates us to you")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as err:
        raise TargetError(f"url port is invalid: {err}") from err
    return parts.hostname, port


def _is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


async def check_resolved_host(host: str, port: int, allow_private: bool) -> list[str]:
    """Resolve ``host`` and return its addresses; refuse if any is private, loopback, link-local or
    otherwise not global (all must pass: a client may connect to any of them)."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as err:
        raise TargetError(f"host {host!r} does not resolve: {err}") from err
    addresses = sorted({str(info[4][0]) for info in infos})
    if not allow_private:
        blocked = [a for a in addresses if not _is_public(a)]
        if blocked:
            raise TargetError(
                f"host {host!r} resolves to non-public address {blocked[0]}; private, loopback and "
                "link-local targets are refused (LLAMA_WEBHOOK_ALLOW_PRIVATE=true allows them)"
            )
    return addresses
