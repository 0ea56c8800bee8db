"""A referral's withdrawal by its referrer is claimed as its accept and decline are: whichever of the
three reaches the database first wins, across API workers.

referral_acceptance takes outcome 'withdrawn', in the columns a decline uses (the ServiceRequest as the
withdrawal left it, and when it says it happened). Referrals withdrawn before have no row: the record's
outcome still refuses an accept or a decline of them.

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

_ACCEPTED = "(outcome = 'accepted' AND coordinator IS NOT NULL AND episode IS NOT NULL)"
_DECIDED_0010 = f"{_ACCEPTED} OR (outcome = 'declined' AND declined IS NOT NULL AND declined_at IS NOT NULL)"
_DECIDED = f"{_ACCEPTED} OR (outcome IN ('declined', 'withdrawn') AND declined IS NOT NULL AND declined_at IS NOT NULL)"


def upgrade() -> None:
    with op.batch_alter_table("referral_acceptance") as table:
        table.drop_constraint("ck_referral_acceptance_decided", type_="check")
        table.create_check_constraint("ck_referral_acceptance_decided", _DECIDED)


def downgrade() -> None:
    """Back to 0012: the withdrawals' claims go (0012 kept accepts and declines only)."""
    op.execute("DELETE FROM referral_acceptance WHERE outcome = 'withdrawn'")
    with op.batch_alter_table("referral_acceptance") as table:
        table.drop_constraint("ck_referral_acceptance_decided", type_="check")
        table.create_check_constraint("ck_referral_acceptance_decided", _DECIDED_0010)
