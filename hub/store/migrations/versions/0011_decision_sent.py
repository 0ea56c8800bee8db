"""A referral's claim says when Kafka acknowledged its events (published_at), so that a claim whose
events Kafka never took (answered 503 and not sent again) is known and published by the next command
that meets it, and one that was sent is not sent again while the record catches up.

Claims made before keep published_at null: the API publishes one again only where the record does not
have it either, which for a claim made before is one Kafka never took.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from hub.store.tables import UtcDateTime

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("referral_acceptance") as table:
        table.add_column(sa.Column("published_at", UtcDateTime, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("referral_acceptance") as table:
        table.drop_column("published_at")
