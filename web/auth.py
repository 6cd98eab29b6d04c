"""Who is calling (API key, admin token or anonymous address): the middleware and cached key lookups."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Handler
from sqlalchemy.exc import SQLAlchemyError

from pipeline.storage.api_keys import KEY_PATTERN, find_by_secret, hash_key
from pipeline.tiers import TIERS
from web import ratelimit, usage
from web.errors import ApiError
from web.keys import ENGINE, PRINCIPAL, SETTINGS
from web.principal import Principal

__all__ = [
    "ADMIN",
    "ADMIN_PRINCIPAL",
    "REVOCATION_HOOKS",
    "RevocationHook",
    "KEY_CACHE_TTL_S",
    "middleware",
    "authenticate",
    "is_admin",
    "on_key_revoked",
    "forget_key",
    "forget_all_keys",
    "setup",
]

# How long a key lookup (found, unknown or revoked) is reused: a burst of connections with one key costs one
# query. Revocations reach every sidecar at once over Redis; this only bounds staleness if that fails.
KEY_CACHE_TTL_S = 10.0
KEY_CACHE_SIZE = 10_000

RevocationHook = Callable[[str], Awaitable[None]]
# Called with the key id of every revoked key, on every sidecar (web.stream closes that key's connections).
REVOCATION_HOOKS: web.AppKey[list[RevocationHook]] = web.AppKey("revocation_hooks")
# True when the request carried the admin token.
ADMIN: web.RequestKey[bool] = web.RequestKey("admin")
ADMIN_PRINCIPAL = Principal(key_id=None, owner="admin", tier="enterprise", subject="admin")

log = logging.getLogger(__name__)


class _KeyCache:
    """Recent lookups by key hash, misses included, with one database query in flight per key."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._entries: OrderedDict[str, tuple[float, Principal | None]] = OrderedDict()
        self._loading: dict[str, asyncio.Task[Principal | None]] = {}
        # Bumped by every eviction: a lookup that started before a revocation must not cache its answer.
        self._generation = 0

    async def get(self, digest: str, load: Callable[[], Awaitable[Principal | None]]) -> Principal | None:
        entry = self._entries.get(digest)
        if entry is not None and entry[0] > time.monotonic():
            return entry[1]
        task = self._loading.get(digest)
        if task is None:
            task = self._loading[digest] = asyncio.create_task(self._load(digest, load))
        # Shielded: one waiter giving up must not cancel the lookup the others wait for.
        return await asyncio.shield(task)

    async def _load(self, digest: str, load: Callable[[], Awaitable[Principal | None]]) -> Principal | None:
        generation = self._generation
        try:
            principal = await load()
        finally:
            del self._loading[digest]
        if generation == self._generation:
            self._entries[digest] = (time.monotonic() + self.ttl_s, principal)
            self._entries.move_to_end(digest)
            while len(self._entries) > KEY_CACHE_SIZE:
                self._entries.popitem(last=False)
        return principal

    def evict(self, key_id: str) -> None:
        self._generation += 1
        for digest in [d for d, (_, p) in self._entries.items() if p is not None and p.key_id == key_id]:
            del self._entries[digest]

    def clear(self) -> None:
        self._generation += 1
        self._entries.clear()


KEY_CACHE: web.AppKey[_KeyCache] = web.AppKey("key_cache")


def _address(request: web.Request) -> str:
    return request.remote or "unknown"


def _invalid(source: str, message: str, reason: str) -> ApiError:
    return ApiError(
        401,
        "invalid_key",
        f"The API key in {source} {message}",
        headers={"WWW-Authenticate": "Bearer"},
        reason=reason,
    )


def _shown(value: str) -> str:
    """Enough of a presented value to recognise it, never a whole secret."""
    match = KEY_PATTERN.match(value)
    if match:
        return match.group(1)
    return repr(value if len(value) <= 4 else value[:4] + "…") + f" ({len(value)} characters)"


def _presented(request: web.Request) -> tuple[str, str] | None:
    """(key or token, where it came from); headers win over the query string."""
    authorization = request.headers.get("Authorization")
    if authorization is not None:
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            raise _invalid(
                "the Authorization header",
                f"is malformed: expected 'Bearer <key>', got scheme {scheme[:20]!r}.",
                "malformed",
            )
        return credentials.strip(), "the Authorization header"
    if (header := request.headers.get("X-API-Key")) is not None:
        return header.strip(), "the X-API-Key header"
    if (parameter := request.query.get("api_key")) is not None:
        return parameter.strip(), "the api_key query parameter"
    return None


def is_admin(request: web.Request) -> bool:
    return bool(request.get(ADMIN, False))


async def authenticate(request: web.Request) -> tuple[Principal, bool]:
    """(principal, is admin) of a request; raises 401 invalid_key for a malformed, unknown or revoked key."""
    presented = _presented(request)
    if presented is None:
        return Principal.anonymous(_address(request)), False
    value, source = presented
    admin_token = request.app[SETTINGS].admin_token
    if (
        admin_token is not None
        and source == "the Authorization header"
        and hmac.compare_digest(value.encode(), admin_token.get_secret_value().encode())
    ):
        return ADMIN_PRINCIPAL, True
    match = KEY_PATTERN.match(value)
    if match is None:
        raise _invalid(
            source,
            f"is malformed: got {_shown(value)}, expected lls_<12 hex>_<43-character secret>.",
            "malformed",
        )
    principal = await _lookup(request.app, value)
    if principal is None:
        raise _invalid(
            source,
            f"({match.group(1)}) is unknown or revoked; create a new one with POST /v1/keys.",
            "unknown_or_revoked",
        )
    return principal, False


async def _lookup(app: web.Application, key: str) -> Principal | None:
    async def load() -> Principal | None:
        try:
            row = await find_by_secret(app[ENGINE], key)
        except (SQLAlchemyError, OSError) as exc:
            log.warning("API key lookup failed: %r", exc)
            raise ApiError(
                503,
                "auth_unavailable",
                "API keys cannot be checked right now; try again shortly.",
                headers={"Retry-After": "5"},
            ) from exc
        if row is None or row.revoked_at is not None:
            return None
        if row.tier not in TIERS:
            # A tier dropped from the code: the key keeps working at the lowest limits rather than failing.
            log.warning("API key %s has unknown tier %r; treating it as free", row.id, row.tier)
        tier = row.tier if row.tier in TIERS else "free"
        return Principal(key_id=row.id, owner=row.owner, tier=tier, subject=row.id)

    return await app[KEY_CACHE].get(hash_key(key), load)


async def _enforce(request: web.Request, principal: Principal) -> None:
    decision = await ratelimit.check_rate(request.app, principal)
    if decision is None:
        return  # Redis unavailable: fail open (counted and logged by web.ratelimit)
    request[ratelimit.DECISION] = decision
    if not decision.allowed:
        who = principal.key_id or f"address {_address(request)}"
        raise ApiError(
            429,
            "rate_limited",
            f"Rate limit of {decision.limit} requests per minute ({principal.tier} tier) exceeded for {who}; "
            f"retry after {decision.retry_after_s} s.",
            headers=decision.headers(),
            retry_after_s=decision.retry_after_s,
        )


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if ratelimit.is_exempt(request.path):
        # Probes, metrics and static files are public: no key lookup, no rate limit.
        request[PRINCIPAL] = Principal.anonymous(_address(request))
        request[ADMIN] = False
        return await handler(request)
    try:
        principal, admin = await authenticate(request)
    except ApiError as error:
        if error.status_code == 401:
            # Failed attempts are charged to the address, so guessing keys is rate limited too.
            await _enforce(request, Principal.anonymous(_address(request)))
        raise
    request[PRINCIPAL] = principal
    request[ADMIN] = admin
    if not admin:  # the operator's token is not limited
        await _enforce(request, principal)
        await usage.count_request(request.app, principal)
    return await handler(request)


def on_key_revoked(app: web.Application, hook: RevocationHook) -> None:
    """Call ``hook(key_id)`` on this sidecar whenever any sidecar revokes a key (register before startup)."""
    app[REVOCATION_HOOKS].append(hook)


async def forget_key(app: web.Application, key_id: str) -> None:
    """Drop a revoked key from this sidecar's cache and run the revocation hooks."""
    app[KEY_CACHE].evict(key_id)
    for hook in app[REVOCATION_HOOKS]:
        try:
            await hook(key_id)
        except Exception:  # one failing hook must not keep the others from running
            log.exception("revocation hook %r failed for %s", hook, key_id)


def forget_all_keys(app: web.Application) -> None:
    """Drop every cached lookup (revocations may have been missed while the control channel was down)."""
    app[KEY_CACHE].clear()


def setup(
    app: web.Application, *, clock: ratelimit.Clock | None = None, key_cache_ttl_s: float = KEY_CACHE_TTL_S
) -> None:
    """Key cache, rate limits, usage, the /v1/keys routes and the control channel (after REDIS and ENGINE)."""
    # Imported here: the routes use this module's helpers, and importing them above would be circular.
    from web import key_routes

    app[KEY_CACHE] = _KeyCache(key_cache_ttl_s)
    app[REVOCATION_HOOKS] = []
    ratelimit.setup(app, clock=clock)
    usage.setup(app)
    key_routes.setup(app)
