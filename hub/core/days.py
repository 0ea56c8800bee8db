"""A date alone, as the hub takes one: the start of that day in the UK (a referral file's date, the
API's `at`, a FHIR date). An answer given so (an outcome or contact dated by day) cannot say whether it
came before or after a referral made later that day: it answers it, in the record, the rules engine
and the KPIs alike. A time of day given with it says which came first, and is taken at its word."""

from __future__ import annotations

from datetime import datetime, time
from zoneinfo import ZoneInfo

UK = ZoneInfo("Europe/London")


def a_day_alone(moment: datetime) -> bool:
    """Whether an instant is what a date alone becomes: the start of its UK day."""
    return moment.astimezone(UK).time() == time(0)


def answers_that_day(answer: datetime, made: datetime) -> bool:
    """Whether an answer dated before what it answers was made still answers it: dated by day alone,
    on the UK day it was made."""
    return answer < made and a_day_alone(answer) and answer.astimezone(UK).date() == made.astimezone(UK).date()
