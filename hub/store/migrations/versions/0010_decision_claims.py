"""A referral's decline is claimed as its accept is, and an episode's close too: whichever reaches the
database first wins, across API workers.

referral_acceptance keeps declines beside accepts (outcome; a decline's ServiceRequest and when it
happened, with no coordinator or episode): claims made before are accepts. episode_closure is new:
one row per episode a `$close` claimed, with what it wrote and was asked. Episodes closed before
have no row: the record's status still refuses a second close of them.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from hub.store.tables import JsonColumn, UtcDateTime

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_DECIDED = (
    "(outcome = 'accepted' AND coordinator IS NOT NULL AND episode IS NOT NULL) OR "
    "(outcome = 'declined' AND declined IS NOT NULL AND declined_at IS NOT NULL)"
)


def upgrade() -> None:
    with op.batch_alter_table("referral_acceptance") as table:
        table.add_column(sa.Column("outcome", sa.String(16), nullable=False, server_default="accepted"))
        table.add_column(sa.Column("declined", JsonColumn, nullable=True))
        table.add_column(sa.Column("declined_at", UtcDateTime, nullable=True))
        table.alter_column("coordinator", existing_type=sa.String(64), nullable=True)
        table.alter_column("episode", existing_type=JsonColumn, nullable=True)
        table.create_check_constraint("ck_referral_acceptance_decided", _DECIDED)
    op.create_table(
        "episode_closure",
        sa.Column("episode_id", sa.String(64), primary_key=True),
        sa.Column("person_key", sa.String(64), nullable=False),
        sa.Column("episode", JsonColumn, nullable=False),
        sa.Column("summary", JsonColumn, nullable=False),
        sa.Column("asked", JsonColumn, nullable=False),
        sa.Column("claimed_at", UtcDateTime, nullable=False),
    )


def downgrade() -> None:
    """Back to 0009: the closes' claims go, and so do the declines' (0009 kept accepts only)."""
    op.drop_table("episode_closure")
    op.execute("DELETE FROM referral_acceptance WHERE outcome <> 'accepted'")
    with op.batch_alter_table("referral_acceptance") as table:
        table.drop_constraint("ck_referral_acceptance_decided", type_="check")
        table.alter_column("episode", existing_type=JsonColumn, nullable=False)
        table.alter_column("coordinator", existing_type=sa.String(64), nullable=False)
        table.drop_column("declined_at")
        table.drop_column("declined")
        table.drop_column("outcome")
