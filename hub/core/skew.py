"""How far ahead of the hub's clock a sender's may run: a time an input gives that is later than the
hub's now by more than this is "in the future" and refused (the API's times, the referral files'
dates), as it would count in the KPIs of a time yet to come."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

CLOCK_SKEW = timedelta(minutes=5)
_UK = ZoneInfo("Europe/London")


def latest_day(now: datetime) -> date:
    """The last UK day a date an input gives may name: today in the UK, give or take CLOCK_SKEW."""
    return (now + CLOCK_SKEW).astimezone(_UK).date()
