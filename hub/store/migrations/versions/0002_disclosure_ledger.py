"""The disclosure ledger: a hash chain of every decision to disclose.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from hub.store.tables import JsonColumn

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "disclosure_ledger",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=False),
        sa.Column("body", JsonColumn, nullable=False),
        sa.Column("person_key", sa.String(64), nullable=True),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.create_index("ix_disclosure_ledger_person_key", "disclosure_ledger", ["person_key"])


def downgrade() -> None:
    op.drop_index("ix_disclosure_ledger_person_key", "disclosure_ledger")
    op.drop_table("disclosure_ledger")
