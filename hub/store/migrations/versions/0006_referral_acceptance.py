"""The claim that lets one `$accept` of a referral win, across API workers.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from hub.store.tables import JsonColumn, UtcDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "referral_acceptance",
        sa.Column("referral_id", sa.String(64), primary_key=True),
        sa.Column("coordinator", sa.String(64), nullable=False),
        sa.Column("episode", JsonColumn, nullable=False),
        sa.Column("claimed_at", UtcDateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("referral_acceptance")
