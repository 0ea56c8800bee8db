"""The shared care record, processed-event tracking and the dead-letter store.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from hub.store.tables import JsonColumn, UtcDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "record_resource",
        sa.Column("resource_type", sa.String(64), primary_key=True),
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("person_key", sa.String(64), nullable=True),
        sa.Column("version_id", sa.Integer, nullable=False),
        sa.Column("event_time", UtcDateTime, nullable=False),
        sa.Column("source_event_id", sa.String(64), nullable=False),
        sa.Column("content", JsonColumn, nullable=False),
    )
    op.create_index("ix_record_resource_person_key", "record_resource", ["person_key"])
    op.create_table(
        "record_identifier",
        sa.Column("resource_type", sa.String(64), primary_key=True),
        sa.Column("resource_id", sa.String(64), primary_key=True),
        sa.Column("system", sa.String(255), primary_key=True),
        sa.Column("value", sa.String(255), primary_key=True),
    )
    op.create_index("ix_record_identifier_lookup", "record_identifier", ["system", "value"])
    op.create_table(
        "processed_event",
        sa.Column("consumer", sa.String(64), primary_key=True),
        sa.Column("event_id", sa.String(64), primary_key=True),
    )
    op.create_table(
        "dead_letter",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("received_at", UtcDateTime, nullable=False),
        sa.Column("source", sa.String(255), nullable=False),
        sa.Column("origin", sa.String(255), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("reason", JsonColumn, nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.UniqueConstraint("origin", "digest", "received_at", name="uq_dead_letter_once"),
    )


def downgrade() -> None:
    op.drop_table("dead_letter")
    op.drop_table("processed_event")
    op.drop_index("ix_record_identifier_lookup", "record_identifier")
    op.drop_table("record_identifier")
    op.drop_index("ix_record_resource_person_key", "record_resource")
    op.drop_table("record_resource")
