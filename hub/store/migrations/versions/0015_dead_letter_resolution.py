"""A dead letter can be resolved: when, by whom and what was done (resent fixed, asked the sender to
resend, nothing to do), so an operator's listing is what is still outstanding. Resolved ones can
then be purged after a retention period (hub.store.dead_letter_status). And the same input refused
again (a sender retrying a message all night) is counted on its entry, with when it last came,
rather than kept again: entries kept before this stay as they are.

Revision ID: 0015
Revises: 0014
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("dead_letter") as table:
        table.add_column(sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True))
        table.add_column(sa.Column("resolved_by", sa.String(255), nullable=True))
        table.add_column(sa.Column("resolution", sa.Text, nullable=True))
        table.add_column(sa.Column("refused_times", sa.Integer, nullable=False, server_default="1"))
        table.add_column(sa.Column("last_received_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    """Back to 0014: every dead letter outstanding again (what was done with them, and how often they
    came, is lost)."""
    with op.batch_alter_table("dead_letter") as table:
        table.drop_column("last_received_at")
        table.drop_column("refused_times")
        table.drop_column("resolution")
        table.drop_column("resolved_by")
        table.drop_column("resolved_at")
