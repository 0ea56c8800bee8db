"""Subscriptions and the webhook delivery outbox.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from hub.store.tables import JsonColumn, UtcDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "subscription",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("document", JsonColumn, nullable=False),
        sa.Column("active", sa.Boolean, nullable=False),
    )
    op.create_table(
        "delivery_outbox",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("subscription_id", sa.String(64), nullable=False),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("person_key", sa.String(64), nullable=True),
        sa.Column("body", JsonColumn, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", UtcDateTime, nullable=False),
        sa.Column("last_error", sa.String(500), nullable=True),
        sa.UniqueConstraint("subscription_id", "event_id", name="uq_delivery_once"),
    )
    op.create_index("ix_delivery_outbox_due", "delivery_outbox", ["status", "next_attempt_at"])


def downgrade() -> None:
    op.drop_index("ix_delivery_outbox_due", "delivery_outbox")
    op.drop_table("delivery_outbox")
    op.drop_table("subscription")
