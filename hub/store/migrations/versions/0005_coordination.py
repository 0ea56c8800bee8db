"""Coordination state per person and the deadline clocks.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from hub.store.tables import JsonColumn, UtcDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "coordination_state",
        sa.Column("person_key", sa.String(64), primary_key=True),
        sa.Column("state", JsonColumn, nullable=False),
        sa.Column("coordinator", sa.String(64), nullable=True),
    )
    op.create_index("ix_coordination_state_coordinator", "coordination_state", ["coordinator"])
    op.create_table(
        "coordination_clock",
        sa.Column("id", sa.String(80), primary_key=True),
        sa.Column("person_key", sa.String(64), nullable=False),
        sa.Column("due", UtcDateTime, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("partition", sa.Integer, nullable=False),
    )
    op.create_index("ix_coordination_clock_due", "coordination_clock", ["partition", "due"])


def downgrade() -> None:
    op.drop_index("ix_coordination_clock_due", "coordination_clock")
    op.drop_table("coordination_clock")
    op.drop_index("ix_coordination_state_coordinator", "coordination_state")
    op.drop_table("coordination_state")
