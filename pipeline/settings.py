"""One typed settings object, read from the environment (prefix ``LLAMA_``)."""

from __future__ import annotations

from functools import lru_cache

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "get_settings"]


class Settings(BaseSettings):
    """Every knob of the pipeline; defaults suit one machine started by ``make up``."""

    model_config = SettingsConfigDict(env_prefix="LLAMA_", env_file=".env", extra="ignore")

    kafka_bootstrap: str = Field("127.0.0.1:9092", description="host:port[,host:port] of the brokers")
    app_id: str = Field("llamastream", description="faust app id: consumer group and changelog prefix")
    topic_prefix: str = Field("", description="prepended to every topic name; tests use a unique one")
    topic_partitions: int = Field(4, ge=1, le=256, description="partitions of raw and derived topics")
    topic_replication: int = Field(1, ge=1, le=5, description="replication factor of created topics")
    raw_retention_hours: int = Field(24 * 7, ge=1)
    dlq_retention_hours: int = Field(24 * 30, ge=1)

    worker_web_enabled: bool = True
    worker_web_host: str = Field("127.0.0.1", description="faust web server (/metrics) bind address")
    worker_web_port: int = Field(6066, ge=1, le=65535)
    table_store: str = Field("memory://", description="faust table store; memory:// restores from changelogs")
    commit_interval_s: float = Field(2.0, gt=0)
    session_timeout_s: float = Field(
        30.0, ge=6, description="how long a dead worker keeps its partitions before the group moves them"
    )

    redis_url: str = "redis://127.0.0.1:6379/0"
    database_url: str = Field(
        "sqlite+aiosqlite:///./var/llamastream.db",
        description="SQLAlchemy async URL; PostgreSQL in make up/test, SQLite when unset",
        validation_alias=AliasChoices("LLAMA_DATABASE_URL", "DATABASE_URL", "database_url"),
    )

    max_record_bytes: int = Field(64 * 1024, ge=256, description="raw records larger than this go to the DLQ")
    tvl_stale_after_s: float = Field(2 * 86400, gt=0, description="event-time age after which TVL is stale")
    price_stale_after_s: float = Field(3600, gt=0, description="event-time age after which a price is stale")
    yield_stale_after_s: float = Field(2 * 86400, gt=0)

    # The web sidecar (python -m web).
    web_host: str = Field("127.0.0.1", description="sidecar bind address")
    web_port: int = Field(8080, ge=1, le=65535, description="sidecar port")
    admin_token: SecretStr | None = Field(None, description="bearer token that may create keys of any tier")
    free_tier_delay_s: float = Field(300, ge=0, description="how late the free tier sees every channel")
    ws_max_subscriptions: int = Field(50, ge=1, description="subscriptions per WebSocket connection (cap)")
    ws_max_inbound_per_s: float = Field(20, gt=0, description="client messages per second per connection")
    ws_max_message_bytes: int = Field(16 * 1024, ge=256, description="largest client message accepted")
    ws_queue_max: int = Field(2000, ge=10, description="outbound messages queued per client before resync")
    ws_heartbeat_s: float = Field(15, gt=0, description="seconds between heartbeats")
    ws_send_timeout_s: float = Field(30, gt=0, description="a client that takes longer to read is closed")
    chain_events_kept: int = Field(2000, ge=0, description="recent chain events per partition for snapshots")
    query_max_rows: int = Field(10_000, ge=1, description="largest page and history scan of /v1/query")
    query_cache_ttl_s: float = Field(60, gt=0, description="Redis lifetime of a cached aggregation")
    history_writer: bool = Field(True, description="this sidecar writes hourly/daily rollups to SQL")

    # Alerts (pipeline/alerting, agents/evaluate_alerts.py, agents/deliver_notifications.py).
    alert_batch_max: int = Field(
        200, ge=1, le=10_000, description="most derived rows the alert evaluator takes in one batch"
    )
    alert_batch_within_s: float = Field(
        0.005, gt=0, le=1, description="longest a row waits for others to fill the evaluator's batch"
    )
    alerts_retention_hours: int = Field(
        24 * 30,
        ge=1,
        description="retention of the alerts.* event topics and of alert history, finished notifications"
        " and their delivery log in SQL (pipeline/alerting/retention.py)",
    )
    alerts_retention_interval_s: float = Field(
        600, gt=0, description="how often each worker deletes alert rows older than the retention"
    )
    webhook_allow_private: bool = Field(
        False, description="allow webhook targets in private, loopback or link-local ranges (tests, on-prem)"
    )
    webhook_timeout_s: float = Field(10, gt=0, description="one webhook request's deadline")
    webhook_max_attempts: int = Field(12, ge=1, description="attempts before a notification is given up")
    webhook_backoff_base_s: float = Field(2, gt=0, description="first retry delay; doubles, with jitter")
    webhook_backoff_max_s: float = Field(3600, gt=0, description="longest delay between two attempts")
    webhook_disable_after_s: float = Field(
        5 * 86400, gt=0, description="an endpoint failing without a success this long is disabled"
    )
    smtp_host: str = Field("127.0.0.1", description="SMTP server for email notifications")
    smtp_port: int = Field(25, ge=1, le=65535)
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_starttls: bool = False
    smtp_sender: str = Field("alerts@llamastream.local", description="From: address of alert emails")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
