"""SQLAlchemy models of the SQL store; Alembic migrations in pipeline/storage/migrations follow them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Float, Index, Integer, String, Text, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "Base",
    "ApiKey",
    "HistoryPoint",
    "AlertRule",
    "Silence",
    "WebhookEndpoint",
    "AlertEvent",
    "AlertGroup",
    "Notification",
    "DeliveryAttempt",
]

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


# ---- alerts (pipeline/alerting): every row has an owner, and every query filters by it ----


class AlertRule(Base):
    """A user's alert rule; ``spec`` is pipeline.alerting.rules.RuleSpec as JSON (by alias)."""

    __tablename__ = "alert_rules"
    __table_args__ = (
        Index("ix_alert_rules_owner_created", "owner", "created_at"),
        Index("ix_alert_rules_app_id", "app_id", "id"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(200))
    # The deployment whose alerts.rules topic carries it (its sidecars reconcile only their own rules).
    app_id: Mapped[str] = mapped_column(String(200))
    spec: Mapped[dict[str, Any]] = mapped_column(JsonDocument)
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # Deleted rules stay (soft delete) so the monthly quota counts them: deleting does not refund one.
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Silence(Base):
    """Mutes notifications of the owner's alerts whose labels match every matcher, until ``ends_at``."""

    __tablename__ = "silences"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(200), index=True)
    # [{"name": label, "op": "=" | "!=" | "=~" | "!~", "value": str}]
    matchers: Mapped[list[dict[str, str]]] = mapped_column(JsonDocument)
    starts_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ends_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    comment: Mapped[str] = mapped_column(String(500), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class WebhookEndpoint(Base):
    """A webhook target. Signing secrets must be readable to sign, so they are stored as issued (unlike
    API keys, which are hashed); up to two are active at once so a receiver can rotate without a gap."""

    __tablename__ = "webhook_endpoints"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(200), index=True)
    url: Mapped[str] = mapped_column(String(2000))
    description: Mapped[str] = mapped_column(String(500), default="")
    # [{"secret": "whsec_...", "created_at": iso, "expires_at": iso | null}], newest first.
    secrets: Mapped[list[dict[str, Any]]] = mapped_column(JsonDocument)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # Start of the current run of failures (null after a success): past the limit the endpoint is disabled.
    failing_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_success_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    disabled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    disabled_reason: Mapped[str | None] = mapped_column(String(500), nullable=True)


class AlertEvent(Base):
    """Alert history: one row per transition from ``alerts.triggered``, unique by (fingerprint, source)
    so a redelivered transition is stored once."""

    __tablename__ = "alert_events"
    __table_args__ = (
        Index("ix_alert_events_owner_as_of", "owner", "as_of"),
        Index("ux_alert_events_fingerprint_source", "fingerprint", "source", unique=True),
        Index("ix_alert_events_recorded_at", "recorded_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    owner: Mapped[str] = mapped_column(String(200))
    rule_id: Mapped[str] = mapped_column(String(64), index=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))
    as_of: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    source: Mapped[str] = mapped_column(String(300))
    transition: Mapped[dict[str, Any]] = mapped_column(JsonDocument)
    # When it was stored (the database's clock): retention counts from here, not from as_of, the event time
    # (a replay of 2022 stores events whose as_of is years old).
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class AlertGroup(Base):
    """Alertmanager-style aggregation group: one rule's instances sharing the rule's group_by labels.
    ``next_flush_at`` is when it is due to notify (group_wait, group_interval, repeat_interval)."""

    __tablename__ = "alert_groups"
    __table_args__ = (Index("ix_alert_groups_app_due", "app_id", "next_flush_at"),)

    group_key: Mapped[str] = mapped_column(String(128), primary_key=True)
    # The faust app id of the deployment whose workers flush it (deployments or tests sharing one database
    # never take each other's work).
    app_id: Mapped[str] = mapped_column(String(200))
    owner: Mapped[str] = mapped_column(String(200), index=True)
    rule_id: Mapped[str] = mapped_column(String(64), index=True)
    group_labels: Mapped[dict[str, str]] = mapped_column(JsonDocument)
    # fingerprint -> the instance's latest AlertTransition
    alerts: Mapped[dict[str, Any]] = mapped_column(JsonDocument)
    # fingerprint -> state at the last notification, to tell what changed since
    notified: Mapped[dict[str, str]] = mapped_column(JsonDocument)
    next_flush_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # When the group last sent (or recorded as muted) a notification: group_interval and repeat count from it.
    last_flush_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # Number of notifications built so far: part of each notification's deterministic id.
    seq: Mapped[int] = mapped_column(Integer, default=0)


class Notification(Base):
    """The outbox: one message to one target. ``id`` is the webhook-id (the same on every retry).
    Written in the same transaction as the group flush, sent by the delivery loop, so a crash between the
    two loses nothing."""

    __tablename__ = "notifications"
    __table_args__ = (
        Index("ix_notifications_app_due", "app_id", "status", "next_attempt_at"),
        Index("ix_notifications_app_created", "app_id", "created_at"),  # retention
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    app_id: Mapped[str] = mapped_column(String(200))  # the deployment whose workers deliver it
    owner: Mapped[str] = mapped_column(String(200), index=True)
    rule_id: Mapped[str] = mapped_column(String(64))
    group_key: Mapped[str] = mapped_column(String(128))
    target_type: Mapped[str] = mapped_column(String(16))  # webhook, email, websocket
    target: Mapped[str] = mapped_column(String(300))  # endpoint id, address, or owner
    payload: Mapped[dict[str, Any]] = mapped_column(JsonDocument)
    # pending, delivered, abandoned, muted, held (its webhook endpoint is disabled: sent once re-enabled)
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Set by a manual replay (pipeline/storage/alert_reads.py): its attempts are logged as replays.
    replay: Mapped[bool] = mapped_column(Boolean, default=False)


class DeliveryAttempt(Base):
    """The delivery log: one row per attempt, readable by the owner through the API."""

    __tablename__ = "delivery_attempts"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    notification_id: Mapped[str] = mapped_column(String(64), index=True)
    owner: Mapped[str] = mapped_column(String(200), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    target: Mapped[str] = mapped_column(String(2000))
    request_headers: Mapped[dict[str, str]] = mapped_column(JsonDocument)
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    latency_ms: Mapped[float] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(String(1000), nullable=True)
    response_excerpt: Mapped[str | None] = mapped_column(String(1000), nullable=True)
    replay: Mapped[bool] = mapped_column(Boolean, default=False)
