"""Who is calling: an API key's id, owner and tier, or an anonymous client counted by address."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.tiers import TIERS, TierLimits

__all__ = ["Principal"]


@dataclass(frozen=True)
class Principal:
    # The key's public id ("lls_ab12cd34"); None for an anonymous client.
    key_id: str | None
    owner: str
    tier: str
    # What rate limits and connection counts are charged to: the key id, or "ip:<address>".
    subject: str

    @property
    def limits(self) -> TierLimits:
        return TIERS[self.tier]

    @property
    def delayed(self) -> bool:
        return self.limits.delayed

    @classmethod
    def anonymous(cls, address: str) -> Principal:
        return cls(key_id=None, owner="anonymous", tier="free", subject=f"ip:{address}")
