"""The months a KPI report is for: Europe/London months, named YYYY-MM.

Which month a report can be asked for (`checked_month`), where a month begins and ends
(`month_bounds`), the months up to one (`months_to`, for the trend), and what a report's figures are
of (`About`): when it was generated (UTC), how far the log goes (its latest event, UK time with the
UTC offset) and the month's status, "complete", "partial: the log goes up to <time>" (the month was
not over at the log's last event, or at generation) or "no events in this month" (the log holds
nothing the KPIs count in it). Pure: today and the time of generation arrive as arguments.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime

from hub.core.huddle import UK
from hub.core.kpi_facts import KpiFacts

COMPLETE = "complete"
NO_EVENTS = "no events in this month"
PARTIAL = "partial: the log goes up to"
# --month's years: no event log is older than 1970, and the bounds keep the month's start and end (one
# month on) inside what datetime can hold; [0-9], not \d, which matches any script's digits (２０２６)
FIRST_YEAR, LAST_YEAR = 1970, 2100
_MONTH = re.compile(r"([0-9]{4})-(0[1-9]|1[0-2])")


@dataclass(frozen=True)
class About:
    """What a report's figures are of: the month, when it was generated (UTC), the log's latest
    event (None: the log holds none) and the month's status (COMPLETE, PARTIAL... or NO_EVENTS)."""

    month: str
    generated: datetime
    log_up_to: datetime | None
    status: str

    @property
    def log_up_to_uk(self) -> str:
        return "" if self.log_up_to is None else uk_time(self.log_up_to)

    @property
    def generated_utc(self) -> str:
        return self.generated.astimezone(UTC).isoformat(timespec="seconds")


def checked_month(text: str, today: date) -> str:
    """`text` if it names a month a report can be for: YYYY-MM in ASCII digits, a year from
    FIRST_YEAR to LAST_YEAR, begun by `today` (a UK day); else ValueError saying why, in one line."""
    typed = _MONTH.fullmatch(text)
    if typed is None:
        raise ValueError(f"{text!r}: give the month as YYYY-MM, e.g. 2026-11")
    if not FIRST_YEAR <= int(typed[1]) <= LAST_YEAR:
        raise ValueError(f"{text!r}: the year must be from {FIRST_YEAR} to {LAST_YEAR}")
    if date(int(typed[1]), int(typed[2]), 1) > today:
        raise ValueError(f"{text!r} has not begun (today is {today} in the UK): there is nothing to report yet")
    return text


def month_bounds(month: str) -> tuple[datetime, datetime]:
    """The UK month `month` (YYYY-MM) as (its first moment, the next month's first moment), UK time."""
    start = datetime.strptime(month, "%Y-%m").replace(tzinfo=UK)
    return start, start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)


def months_to(month: str, count: int) -> list[str]:
    """The `count` months up to and including `month` (YYYY-MM), the earliest first."""
    year, number = int(month[:4]), int(month[5:7])
    wanted = []
    for back in range(count - 1, -1, -1):
        y, zero_based = divmod(year * 12 + number - 1 - back, 12)
        wanted.append(f"{y:04d}-{zero_based + 1:02d}")
    return wanted


def about(fold: KpiFacts, month: str, generated: datetime) -> About:
    """The status of `month` (YYYY-MM) on the folded log, for a report generated at `generated`
    (ask after fold.report(month), which works out the first contacts this looks at)."""
    last = fold.log_up_to
    _, end = month_bounds(month)
    if last is None or month not in months_counted(fold):
        status = NO_EVENTS
    elif last < end or generated < end:
        status = f"{PARTIAL} {uk_time(last)}"
    else:
        status = COMPLETE
    return About(month, generated.astimezone(UTC), last, status)


def months_counted(fold: KpiFacts) -> set[str]:
    """The UK months (YYYY-MM) in which the log holds something the KPIs count."""
    times = [r.at for r in fold.referrals.values()]
    times += [t for r in fold.referrals.values() for t in (r.first_contact, r.first_visit) if t is not None]
    times += [t for e in fold.stays() for t in (e.start, e.end, e.letter) if t is not None]
    times += [*fold.onward.values(), *(at for at, _ in fold.outcomes.values())]
    months = {t.astimezone(UK).strftime("%Y-%m") for t in times}
    return months | {day.strftime("%Y-%m") for day, _, _ in fold.huddles.values()}


def uk_time(moment: datetime) -> str:
    """A moment as UK local time with its UTC offset, to the second (2026-11-28T09:00:00+00:00)."""
    return moment.astimezone(UK).isoformat(timespec="seconds")
