"""A rejected row of a file is kept once per source and content, however often the file is sent.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import hashlib
import re

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_FILE_ROW = re.compile(r"#row=[0-9]+\Z")  # (hub.store.sql.content_key as of this revision)


def upgrade() -> None:
    with op.batch_alter_table("dead_letter") as table:
        table.add_column(sa.Column("content_key", sa.String(64), nullable=True))
    _key_the_rows_already_kept()
    op.create_index("uq_dead_letter_content", "dead_letter", ["content_key"], unique=True)
    op.create_index("ix_dead_letter_digest", "dead_letter", ["digest"])


def _key_the_rows_already_kept() -> None:
    """The first of each row kept before takes the key; copies kept again later stay, unkeyed."""
    dead_letter = sa.table(
        "dead_letter",
        sa.column("id", sa.Integer),
        sa.column("source", sa.String),
        sa.column("origin", sa.String),
        sa.column("digest", sa.String),
        sa.column("content_key", sa.String),
    )
    conn = op.get_bind()
    rows = conn.execute(
        sa.select(dead_letter.c.id, dead_letter.c.source, dead_letter.c.origin, dead_letter.c.digest)
        .where(dead_letter.c.origin.like("%#row=%"))
        .order_by(dead_letter.c.id)
    ).all()
    keyed: dict[str, int] = {}
    for row in rows:
        if _FILE_ROW.search(row.origin):
            keyed.setdefault(hashlib.sha256(f"{row.source}\n{row.digest}".encode()).hexdigest(), row.id)
    for key, first in keyed.items():
        conn.execute(sa.update(dead_letter).where(dead_letter.c.id == first).values(content_key=key))


def downgrade() -> None:
    op.drop_index("ix_dead_letter_digest", "dead_letter")
    op.drop_index("uq_dead_letter_content", "dead_letter")
    with op.batch_alter_table("dead_letter") as table:
        table.drop_column("content_key")
