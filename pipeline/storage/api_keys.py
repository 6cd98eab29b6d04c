"""API key repository: create (the secret is returned once), find by secret, list by owner, revoke."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from pipeline.storage.models import ApiKey
from pipeline.tiers import TIERS

__all__ = [
    "KEY_PREFIX",
    "KEY_PATTERN",
    "generate_key",
    "hash_key",
    "key_id_of",
    "create_key",
    "find_by_secret",
    "get_key",
    "list_keys",
    "owner_exists",
    "revoke_key",
]

KEY_PREFIX = "lls_"
# lls_<12 hex: public id>_<secret: token_urlsafe(32), 43 characters of [A-Za-z0-9_-]>
KEY_PATTERN = re.compile(r"^(lls_[0-9a-f]{12})_([A-Za-z0-9_-]{43})$")


def generate_key() -> tuple[str, str]:
    """A new (public id, whole key) pair; the id is the key's first 16 characters."""
    key_id = KEY_PREFIX + secrets.token_hex(6)
    return key_id, f"{key_id}_{secrets.token_urlsafe(32)}"


def hash_key(key: str) -> str:
    # A plain SHA-256 rather than a slow password hash: the secret carries 256 random bits, so there is no
    # dictionary to try and a fast hash keeps per-request lookups cheap.
    return hashlib.sha256(key.encode()).hexdigest()


def key_id_of(key: str) -> str | None:
    """The public id of a well-formed key; None when the key is malformed."""
    match = KEY_PATTERN.match(key)
    return match.group(1) if match else None


async def create_key(engine: AsyncEngine, *, owner: str, tier: str, label: str = "") -> tuple[ApiKey, str]:
    """Store a new key and return it with its whole secret, which is not kept and cannot be shown again."""
    if tier not in TIERS:
        raise ValueError(f"unknown tier {tier!r}: expected one of {', '.join(TIERS)}")
    key_id, key = generate_key()
    row = ApiKey(id=key_id, secret_hash=hash_key(key), owner=owner, tier=tier, label=label, created_at=_now())
    async with AsyncSession(engine, expire_on_commit=False) as session, session.begin():
        session.add(row)
    return row, key


async def find_by_secret(engine: AsyncEngine, key: str) -> ApiKey | None:
    """The key whose hash matches (revoked ones included: check ``revoked_at``); None if there is none."""
    digest = hash_key(key)
    async with AsyncSession(engine) as session:
        row = (await session.execute(select(ApiKey).where(ApiKey.secret_hash == digest))).scalar_one_or_none()
    # The lookup goes through the index; the constant-time compare makes the final check independent of
    # how many leading characters match, whatever the database's comparison does.
    if row is None or not hmac.compare_digest(row.secret_hash, digest):
        return None
    return row


async def get_key(engine: AsyncEngine, key_id: str) -> ApiKey | None:
    async with AsyncSession(engine) as session:
        return await session.get(ApiKey, key_id)


async def list_keys(engine: AsyncEngine, owner: str | None = None) -> list[ApiKey]:
    """Keys of one owner (all keys when owner is None), oldest first."""
    query = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
    if owner is not None:
        query = query.where(ApiKey.owner == owner)
    async with AsyncSession(engine) as session:
        return list((await session.execute(query)).scalars())


async def owner_exists(engine: AsyncEngine, owner: str) -> bool:
    """Whether any key (revoked ones included) was ever created for ``owner``."""
    async with AsyncSession(engine) as session:
        query = select(ApiKey.id).where(ApiKey.owner == owner).limit(1)
        return (await session.execute(query)).first() is not None


async def revoke_key(engine: AsyncEngine, key_id: str, *, owner: str | None = None) -> ApiKey | None:
    """Revoke a key (of ``owner`` when given); None if there is none. Revoking again keeps the first time."""
    async with AsyncSession(engine, expire_on_commit=False) as session, session.begin():
        row = await session.get(ApiKey, key_id, with_for_update=True)
        if row is None or (owner is not None and row.owner != owner):
            return None
        if row.revoked_at is None:
            row.revoked_at = _now()
    return row


def _now() -> datetime:
    return datetime.now(UTC)
