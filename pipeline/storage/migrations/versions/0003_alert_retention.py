"""alert retention: when each alert event was stored, and the indexes the retention job deletes by

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 10:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # SQLite cannot add a column whose default is not a constant: rebuild the table there. On PostgreSQL
    # this is an ALTER; now() is evaluated once, so existing rows count as stored at the migration, without
    # rewriting the table.
    recreate: Literal["always", "auto"] = "always" if op.get_bind().dialect.name == "sqlite" else "auto"
    with op.batch_alter_table("alert_events", recreate=recreate) as batch:
        batch.add_column(
            sa.Column("recorded_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False)
        )
        batch.create_index("ix_alert_events_recorded_at", ["recorded_at"], unique=False)
    op.create_index("ix_notifications_app_created", "notifications", ["app_id", "created_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_notifications_app_created", table_name="notifications")
    with op.batch_alter_table("alert_events") as batch:
        batch.drop_index("ix_alert_events_recorded_at")
        batch.drop_column("recorded_at")
