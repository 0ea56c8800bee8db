"""`carehub ingest register --extracted-on`: a day the adapter would refuse in every row as in the future
is refused once, before any row is read; a day it would accept never is, up to UK midnight and the
clock skew either side of it (the end-to-end run is in tests/e2e/test_referral_ingest.py)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from adapters.referrals.fields import RowFields
from hub.core.errors import InvalidMessageError
from hub.referrals_ingest import future_extraction

# 23:00 UTC is midnight in the UK in summer (BST), 23:00 in winter (GMT)
MOMENTS = [
    datetime(2026, 7, 1, 22, 54, tzinfo=UTC),
    datetime(2026, 7, 1, 22, 56, tzinfo=UTC),
    datetime(2026, 7, 1, 23, 1, tzinfo=UTC),
    datetime(2026, 12, 1, 23, 54, tzinfo=UTC),
    datetime(2026, 12, 1, 23, 56, tzinfo=UTC),
    datetime(2026, 12, 2, 0, 1, tzinfo=UTC),
]


def refused_in_a_row(day: date, now: datetime) -> bool:
    fields = RowFields(2, {"extracted_on": day.isoformat()})
    try:
        fields.not_future("extracted_on", fields.day("extracted_on"), now)
    except InvalidMessageError:
        return True
    return False


@pytest.mark.parametrize("now", MOMENTS, ids=lambda moment: moment.isoformat())
@pytest.mark.parametrize("days", [-1, 0, 1, 2])
def test_the_option_is_refused_exactly_when_every_row_would_be(now: datetime, days: int) -> None:
    day = now.date() + timedelta(days=days)
    assert bool(future_extraction(day, now)) is refused_in_a_row(day, now)


def test_the_refusal_names_the_option_the_date_and_today() -> None:
    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    assert future_extraction(date(2026, 12, 3), now) == (
        "--extracted-on 2026-12-03 is in the future (today is 2026-12-01 in the UK): give the day the register "
        "was extracted; nothing was sent"
    )
    assert future_extraction(None, now) == ""
