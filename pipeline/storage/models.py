"""SQLAlchemy models of the SQL store; Alembic migrations in pipeline/storage/migrations follow them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Float, Index, Integer, String
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = ["Base", "ApiKey", "HistoryPoint"]

JsonDocument = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    pass


class ApiKey(Base):
    """An API key: only a hash of its secret is stored; the secret is shown once, at creation."""

    __tablename__ = "api_keys"

    # Public, non-secret id shown in listings and logs ("lls_" + 12 hex).
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    # SHA-256 of the whole key; keys are 256-bit random, so a fast hash is not brute-forceable.
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    owner: Mapped[str] = mapped_column(String(200))
    tier: Mapped[str] = mapped_column(String(32))
    label: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class HistoryPoint(Base):
    """One rollup bucket (hour or day) of one series of a channel: OHLC of its metric and its last row."""

    __tablename__ = "history_points"
    __table_args__ = (Index("ix_history_channel_resolution_bucket", "channel", "resolution", "bucket_start"),)

    channel: Mapped[str] = mapped_column(String(16), primary_key=True)  # tvl, prices, yields
    series_key: Mapped[str] = mapped_column(String(300), primary_key=True)  # the derived topic's key
    resolution: Mapped[str] = mapped_column(String(4), primary_key=True)  # "1h" or "1d"
    bucket_start: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    metric: Mapped[str] = mapped_column(String(32))  # tvl_usd, price, apy
    open: Mapped[float | None] = mapped_column(Float, nullable=True)
    high: Mapped[float | None] = mapped_column(Float, nullable=True)
    low: Mapped[float | None] = mapped_column(Float, nullable=True)
    close: Mapped[float | None] = mapped_column(Float, nullable=True)
    samples: Mapped[int] = mapped_column(Integer, default=0)
    # Event time of the newest update folded into the bucket: a redelivered older update changes nothing.
    last_as_of: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # The newest update's row as the channel defines it, so history rows filter like live rows.
    fields: Mapped[dict[str, Any]] = mapped_column(JsonDocument)
