"""A dead letter can be resolved: when, by whom and what was done (resent fixed, asked the sender to
resend, nothing to do), so an operator's listing is what is still outstanding. Resolved ones can
then be purged after a retention period (hub.store.dead_letter_status). And the same input refused
again (a sender retrying a message all night) is counted on its entry, with when it last came,
rather than kept again: of the entries kept before this, the oldest of each source and content takes
the key, so its next refusal counts there (the others stay as they were: nothing kept is deleted).

Revision ID: 0015
Revises: 0014
"""

from __future__ import annotations

import hashlib

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
    _key_the_oldest_of_each()


def _key_the_oldest_of_each() -> None:
    """The oldest unkeyed entry of each source and content takes the key (hub.store.sql.content_key as
    of this revision), unless an entry holds it already (a file's row keyed by 0007)."""
    dead_letter = sa.table(
        "dead_letter",
        sa.column("id", sa.Integer),
        sa.column("source", sa.String),
        sa.column("digest", sa.String),
        sa.column("content_key", sa.String),
    )
    conn = op.get_bind()
    taken = {k for (k,) in conn.execute(sa.select(dead_letter.c.content_key).where(dead_letter.c.content_key.is_not(None)))}
    rows = conn.execute(
        sa.select(dead_letter.c.id, dead_letter.c.source, dead_letter.c.digest)
        .where(dead_letter.c.content_key.is_(None))
        .order_by(dead_letter.c.id)
    ).all()
    for row in rows:
        key = hashlib.sha256(f"{row.source[:255]}\n{row.digest}".encode()).hexdigest()
        if key not in taken:
            taken.add(key)
            conn.execute(sa.update(dead_letter).where(dead_letter.c.id == row.id).values(content_key=key))


def downgrade() -> None:
    """Back to 0014: every dead letter outstanding again (what was done with them, and how often they
    came, is lost)."""
    dead_letter = sa.table("dead_letter", sa.column("origin", sa.String), sa.column("content_key", sa.String))
    op.get_bind().execute(  # (0014 keys a file's rows alone)
        sa.update(dead_letter).where(dead_letter.c.origin.not_like("%#row=%")).values(content_key=None)
    )
    with op.batch_alter_table("dead_letter") as table:
        table.drop_column("last_received_at")
        table.drop_column("refused_times")
        table.drop_column("resolution")
        table.drop_column("resolved_by")
        table.drop_column("resolved_at")
