"""An index on the outbox's (status, subscription_id, id), so the webhook sender finds each
subscription's first pending delivery in one probe, however long another subscription's backlog.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_delivery_outbox_head", "delivery_outbox", ["status", "subscription_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_delivery_outbox_head", table_name="delivery_outbox")
