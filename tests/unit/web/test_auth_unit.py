"""The pure parts of keys and limits: key format and hashing, how a key is presented, the cache, headers."""

from __future__ import annotations

import asyncio
import hashlib

import pytest
from aiohttp.test_utils import make_mocked_request

from pipeline.storage.api_keys import KEY_PATTERN, generate_key, hash_key, key_id_of
from web.auth import _KeyCache, _presented, _shown
from web.errors import ApiError
from web.key_routes import CreateKeyBody
from web.principal import Principal
from web.ratelimit import Decision, is_exempt


def test_a_key_is_its_public_id_and_a_256_bit_secret() -> None:
    key_id, key = generate_key()
    match = KEY_PATTERN.match(key)
    assert match is not None and match.group(1) == key_id == key[:16]
    assert key_id.startswith("lls_") and len(key_id) == 16
    assert len(match.group(2)) == 43  # token_urlsafe(32): 32 random bytes
    assert key_id_of(key) == key_id
    assert generate_key()[1] != key


def test_the_stored_hash_is_the_sha256_of_the_whole_key() -> None:
    _, key = generate_key()
    assert hash_key(key) == hashlib.sha256(key.encode()).hexdigest()


@pytest.mark.parametrize(
    "value",
    [
        "",
        "lls_",
        "lls_0123456789ab",
        "lls_0123456789AB_" + "a" * 43,
        "lls_0123456789ab_" + "a" * 42,
        "lls_0123456789ab_" + "a" * 42 + "=",
        "xyz_0123456789ab_" + "a" * 43,
        " lls_0123456789ab_" + "a" * 43,
    ],
)
def test_malformed_keys_have_no_id(value: str) -> None:
    assert key_id_of(value) is None


def test_a_shown_key_never_reveals_its_secret() -> None:
    key_id, key = generate_key()
    secret = key[len(key_id) + 1 :]
    assert _shown(key) == key_id
    assert secret not in _shown(key + "x") and secret[:8] not in _shown(key + "x")
    assert _shown("hunter2-password") == "'hunt…' (16 characters)"
    assert _shown("abc") == "'abc' (3 characters)"


def test_headers_win_over_the_query_string() -> None:
    request = make_mocked_request(
        "GET",
        "/v1/echo?api_key=from-query",
        headers={"Authorization": "Bearer  from-auth ", "X-API-Key": "x"},
    )
    assert _presented(request) == ("from-auth", "the Authorization header")
    request = make_mocked_request("GET", "/v1/echo?api_key=from-query", headers={"X-API-Key": "from-header"})
    assert _presented(request) == ("from-header", "the X-API-Key header")
    assert _presented(make_mocked_request("GET", "/v1/echo?api_key=q")) == (
        "q",
        "the api_key query parameter",
    )
    assert _presented(make_mocked_request("GET", "/v1/echo")) is None


@pytest.mark.parametrize("authorization", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer   ", "lls_0123456789ab"])
def test_an_authorization_header_must_be_a_bearer_credential(authorization: str) -> None:
    with pytest.raises(ApiError) as raised:
        _presented(make_mocked_request("GET", "/v1/echo", headers={"Authorization": authorization}))
    assert raised.value.status_code == 401 and raised.value.code == "invalid_key"


def test_exempt_paths_are_an_explicit_set_and_prefixes() -> None:
    assert all(
        is_exempt(path)
        for path in [
            "/healthz",
            "/readyz",
            "/metrics",
            "/openapi.json",
            "/docs",
            "/dashboard",
            "/dashboard/app.js",
            "/static/x.css",
        ]
    )
    assert not any(
        is_exempt(path) for path in ["/v1/keys", "/v1/usage", "/v1/stream", "/healthzz", "/metrics/x"]
    )


def test_decision_headers_carry_retry_after_only_when_refused() -> None:
    allowed = Decision(allowed=True, limit=60, remaining=59, reset_s=1, retry_after_s=0)
    assert allowed.headers() == {"RateLimit-Limit": "60", "RateLimit-Remaining": "59", "RateLimit-Reset": "1"}
    refused = Decision(allowed=False, limit=60, remaining=0, reset_s=60, retry_after_s=1)
    assert refused.headers()["Retry-After"] == "1" and refused.headers()["RateLimit-Remaining"] == "0"


async def test_the_key_cache_runs_one_lookup_for_concurrent_callers_and_reuses_it() -> None:
    cache = _KeyCache(ttl_s=3600)
    principal = Principal(key_id="lls_0123456789ab", owner="o", tier="pro", subject="lls_0123456789ab")
    release = asyncio.Event()
    calls = 0

    async def load() -> Principal | None:
        nonlocal calls
        calls += 1
        await release.wait()
        return principal

    waiters = [asyncio.create_task(cache.get("digest", load)) for _ in range(50)]
    await asyncio.sleep(0)
    release.set()
    assert await asyncio.gather(*waiters) == [principal] * 50
    assert await cache.get("digest", load) is principal
    assert calls == 1


async def test_evicting_a_key_forgets_it_even_when_a_lookup_was_in_flight() -> None:
    cache = _KeyCache(ttl_s=3600)
    principal = Principal(key_id="lls_0123456789ab", owner="o", tier="pro", subject="lls_0123456789ab")
    started, release = asyncio.Event(), asyncio.Event()

    async def slow() -> Principal | None:
        started.set()
        await release.wait()
        return principal

    in_flight = asyncio.create_task(cache.get("digest", slow))
    await started.wait()
    cache.evict("lls_0123456789ab")  # revoked while the database answered with the key still active
    release.set()
    assert await in_flight is principal

    async def revoked() -> Principal | None:
        return None

    # The stale answer was not cached: the next lookup asks again and sees the revocation.
    assert await cache.get("digest", revoked) is None
    assert await cache.get("digest", slow) is None  # and the miss is cached too


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"owner": ""}, "owner"),
        ({"owner": "o" * 201}, "owner"),
        ({"owner": "o", "tier": "gold"}, "tier"),
        ({"owner": "o", "label": "l" * 201}, "label"),
        ({"owner": "o", "colour": "red"}, "colour"),
    ],
)
def test_create_key_bodies_are_validated(body: dict[str, object], field: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as raised:
        CreateKeyBody.model_validate(body)
    assert raised.value.errors()[0]["loc"] == (field,)
    assert CreateKeyBody.model_validate({"owner": " o "}) == CreateKeyBody(owner="o", tier="free", label="")
