"""How far ahead of the hub's clock a sender's may run: a time an input gives that is later than the
hub's now by more than this is "in the future" and refused (the API's times, the referral files'
dates), as it would count in the KPIs of a time yet to come."""

from __future__ import annotations

from datetime import timedelta

CLOCK_SKEW = timedelta(minutes=5)
