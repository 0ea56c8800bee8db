"""A claim of a referral names the person, so that a person is accepted once while their episode is open.

Claims made before keep no person (null): the coordination state still refuses those people.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("referral_acceptance") as table:
        table.add_column(sa.Column("person_key", sa.String(64), nullable=True))
    op.create_index("ix_referral_acceptance_person_key", "referral_acceptance", ["person_key"])


def downgrade() -> None:
    op.drop_index("ix_referral_acceptance_person_key", "referral_acceptance")
    with op.batch_alter_table("referral_acceptance") as table:
        table.drop_column("person_key")
