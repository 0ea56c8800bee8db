"""The person-key secret's fingerprint: one row, an HMAC of a fixed label under the secret (never the
secret), recorded by the first process to open the database with this table empty. A process whose
secret gives another fingerprint refuses to start (hub.store.key_fingerprint): people keyed under two
secrets are two records of one person.

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "key_fingerprint",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("id = 1", name="ck_key_fingerprint_one_row"),
    )


def downgrade() -> None:
    """Back to 0013: the fingerprint goes (the next 0014 records it again from whoever opens it first)."""
    op.drop_table("key_fingerprint")
