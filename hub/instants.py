"""Moments typed on the command line, read as the people who type them mean them.

A time without an offset is UK local time (Europe/London: GMT in winter, BST in summer), as a
coordinator or an auditor reads a clock; one with an offset or Z is taken as it says. A date alone
is the start of that day, or, where it bounds a period from above (--until, --as-of), its end, so
that `--until 2026-10-05` includes the 5th. A UK time the clocks go back through (01:00-02:00 on
the last Sunday of October happens twice) is its first occurrence when it starts a period and its
second when it ends one, so the period keeps the whole hour. A UK time the clocks go forward over
(01:00-02:00 on the last Sunday of March never happens) is refused, saying so: no guess at what was
meant is safe. Everything is returned in UTC.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

import typer

UK = ZoneInfo("Europe/London")
_EXAMPLE = "e.g. 2026-10-05, 2026-10-05T14:30 (UK time) or 2026-10-05T13:30Z"


def instant(text: str, *, end_of_day: bool = False) -> datetime:
    """The moment `text` names, in UTC (ValueError, saying what is accepted, if it names none)."""
    text = text.strip()
    try:
        if "T" not in text.upper() and " " not in text:  # a date alone (2026-10-05, 20261005)
            day = date.fromisoformat(text)
            if end_of_day:  # the last moment of the day in the UK, whatever its length (a clock change)
                return datetime.combine(day + timedelta(days=1), time.min, UK).astimezone(UTC) - timedelta(
                    microseconds=1
                )
            return datetime.combine(day, time.min, UK).astimezone(UTC)
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO 8601 date or time ({_EXAMPLE})") from None
    if moment.tzinfo is None:
        return _uk(text, moment, end_of_day=end_of_day)
    return moment.astimezone(UTC)


def _uk(text: str, typed: datetime, *, end_of_day: bool) -> datetime:
    """A wall-clock time in the UK, in UTC: in the hour the clocks go back, the occurrence that keeps
    the period whole (BST from, GMT to); in the hour they go forward over, ValueError."""
    moment = typed.replace(tzinfo=UK, fold=1 if end_of_day else 0)
    if moment.astimezone(UTC).astimezone(UK).replace(tzinfo=None) == typed:
        return moment.astimezone(UTC)
    readings, spec = [], "auto" if typed.second or typed.microsecond else "minutes"
    for fold in (0, 1):  # (zoneinfo reads a time that never happened with the offset before, or after)
        zone = typed.replace(tzinfo=UK, fold=fold)
        fixed = typed.replace(tzinfo=timezone(zone.utcoffset() or timedelta(0)))
        readings.append(f"{fixed.isoformat(timespec=spec)} ({zone.tzname()}, {fixed.astimezone(UTC):%H:%M}Z)")
    raise ValueError(
        f"{text!r} is not a UK time: the clocks go forward an hour over it that night; "
        f"give it with an offset: {' or '.join(readings)}"
    )


def from_(text: str | datetime | None) -> datetime | None:
    """A typer parser for the start of a period (--since)."""
    return _parsed(text, end_of_day=False)


def up_to(text: str | datetime | None) -> datetime | None:
    """A typer parser for the end of a period (--until, --as-of): a date alone includes that day."""
    return _parsed(text, end_of_day=True)


def _parsed(text: str | datetime | None, *, end_of_day: bool) -> datetime | None:
    if text is None or isinstance(text, datetime):  # (a default, or a caller passing a datetime)
        return None if text is None else (text if text.tzinfo else text.replace(tzinfo=UK)).astimezone(UTC)
    try:
        return instant(text, end_of_day=end_of_day)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
