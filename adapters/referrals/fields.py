"""One row's fields, checked one at a time; each problem names the row and the field.

The values come from CSV cells (strings) or flat JSON documents; nothing here knows FHIR.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from hub.core import nhs_number as nhs
from hub.core.errors import InvalidMessageError
from hub.core.skew import CLOCK_SKEW, latest_day

UK = ZoneInfo("Europe/London")
MAX_TEXT = 2000
FHIR_INTEGER_MAX = 2_147_483_647
_ODS = re.compile(r"[A-Z0-9]{3,6}", re.ASCII)
_PRACTICE = re.compile(r"[A-Z][0-9]{5}", re.ASCII)
_GSS = re.compile(r"[EWSN][0-9]{8}", re.ASCII)  # ONS/GSS local-authority code, e.g. E09000008 Croydon
_COUNT = re.compile(r"[0-9]{1,10}", re.ASCII)
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", re.ASCII)
_DATETIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,6})?)?(Z|[+-][0-9]{2}:[0-9]{2})?"
)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# a UK postcode's shape (outward code, inward code), not a check that Royal Mail delivers to it
_POSTCODE = re.compile(r"GIR ?0AA|[A-Z]{1,2}[0-9][A-Z0-9]? ?[0-9][A-Z]{2}", re.ASCII)
_PHONE = re.compile(r"\+?[0-9 ().-]+", re.ASCII)  # digits, with the spaces, brackets and dashes people write
# what may follow the number: a UK extension (ext 4521, ext. 4521, extn 4521, extension 4521, x4521), then
# a short note in brackets, letters and not digits ("(home)", "(mum's mobile)"); neither is checked further
_EXTENSION = re.compile(r"\s*\b(?:ext(?:n|ension)?\.?|x)\s*[0-9]{1,6}\s*$", re.ASCII | re.IGNORECASE)
_NOTE = re.compile(r"\s*\([A-Za-z][A-Za-z ,.'&/-]{0,23}\)\s*$", re.ASCII)
_EMAIL = re.compile(r"[^@\s]+@[^@\s.]+(\.[^@\s.]+)+")


@dataclass(frozen=True)
class When:
    """A date or an instant from the input: `fhir` as FHIR writes it, `utc` as the event time."""

    fhir: str
    utc: datetime
    day: date
    timed: bool = False  # a date and time, not a date alone


def is_gss(code: str) -> bool:
    """True for an ONS (GSS) local-authority code such as E09000008."""
    return bool(_GSS.fullmatch(code))


def is_ods(code: str) -> bool:
    """True for something shaped like an ODS organisation code (3 to 6 letters and digits)."""
    return bool(_ODS.fullmatch(code))


class RowFields:
    """Typed, checked access to one row's values; every failure is an InvalidMessageError."""

    def __init__(self, number: int, values: Mapping[str, Any], misspelt: Callable[[str], str] | None = None) -> None:
        self.number = number
        self._values = values
        self._misspelt = misspelt  # a missing field's name -> the fields it was probably sent as, or ''

    def fail(self, name: str, problem: str, code: str = "value") -> InvalidMessageError:
        """The error for one field of this row."""
        return InvalidMessageError(f"row {self.number}, field {name}: {problem}", (f"row {self.number}", name), code)

    def text(self, name: str, *, required: bool = True) -> str | None:
        """A string value, stripped; None (or a `required` error) when absent or blank."""
        value = self._values.get(name)
        if value is None or (isinstance(value, str) and not value.strip()):
            if required:
                hint = self._misspelt(name) if self._misspelt and name not in self._values else ""
                raise self.fail(name, f"is required ({hint})" if hint else "is required", "required")
            return None
        if not isinstance(value, str):
            raise self.fail(name, f"must be a string, got {type(value).__name__}")
        value = value.strip()
        if not _encodable(value) or _CONTROL.search(value):
            raise self.fail(name, "contains characters that are not printable text")
        if len(value) > MAX_TEXT:
            raise self.fail(name, f"is longer than {MAX_TEXT} characters")
        return value

    def nhs_number(self, name: str = "nhs_number") -> str:
        """A Modulus-11-valid NHS number, spaces and dashes removed (never echoed in the message)."""
        raw = self.text(name) or ""
        if _SCIENTIFIC.fullmatch(raw):  # (the digits are gone: saying how many characters helps no one)
            raise self.fail(
                name,
                "is a number Excel has shown in scientific notation (like 9.43E+09), which loses its last digits: "
                "format the column as Text, put the NHS numbers back in from the source, and save the file again",
            )
        problem = nhs.why_invalid(raw)
        if problem:
            raise self.fail(name, problem.removeprefix("NHS number "))
        return nhs.normalise(raw)

    def ods(self, name: str, *, practice: bool = False, required: bool = True) -> str | None:
        """An ODS code (upper-cased); a GP practice code is one letter and five digits."""
        raw = self.text(name, required=required)
        if raw is None:
            return None
        code = raw.upper()
        if practice and not _PRACTICE.fullmatch(code):
            raise self.fail(name, f"{raw!r} is not a GP practice ODS code (a letter and 5 digits, e.g. Y00001)")
        if not _ODS.fullmatch(code):
            raise self.fail(name, f"{raw!r} is not an ODS code (3 to 6 letters and digits)")
        return code

    def postcode(self, name: str) -> str | None:
        """A UK postcode by its shape, upper-cased and spaced `SW1A 1AA`; None when absent. The value,
        a person's, is not echoed."""
        raw = self.text(name, required=False)
        if raw is None:
            return None
        code = " ".join(raw.upper().split())
        if not _POSTCODE.fullmatch(code):
            raise self.fail(name, "is not a UK postcode (an outward and an inward code, such as SW1A 1AA or M1 1AE)")
        compact = code.replace(" ", "")
        return f"{compact[:-3]} {compact[-3:]}"

    def phone(self, name: str) -> str | None:
        """A phone number as written (spaces, brackets and dashes allowed): a UK one of 10 or 11 digits
        starting 0, or an international one starting + or 00, then perhaps an extension (ext 4521, x4521)
        and a short note in brackets ("(home)"); None when absent. Not echoed."""
        raw = self.text(name, required=False)
        if raw is None:
            return None
        raw = " ".join(raw.split())
        if _SCIENTIFIC.fullmatch(raw):
            raise self.fail(name, f"is a number Excel has shown in scientific notation (like 9.43E+09){_AS_TEXT}")
        number = _NOTE.sub("", raw, count=1)
        number = _EXTENSION.sub("", number, count=1)
        digits = re.sub(r"[^0-9]", "", number.replace("(0)", "") if number.startswith("+44") else number)
        if _PHONE.fullmatch(number) and _is_phone(digits, international=number.startswith(("+", "00"))):
            return raw
        if _PHONE.fullmatch(raw) and not raw.startswith("+") and len(digits) in (9, 10) and digits[0] != "0":
            raise self.fail(name, f"has no leading 0, as Excel drops it from a column of numbers{_AS_TEXT}")
        raise self.fail(
            name,
            "is not a phone number (a UK number of 10 or 11 digits starting 0, such as 01632 960123, or an "
            "international one starting +, such as +44 1632 960123; spaces, brackets and dashes are fine, and "
            "an extension such as ext 4521 or a short note in brackets)",
        )

    def email(self, name: str) -> str | None:
        """An email address by its shape (something@domain.tld); None when absent. Not echoed."""
        raw = self.text(name, required=False)
        if raw is not None and not _EMAIL.fullmatch(raw):
            raise self.fail(name, "is not an email address (such as name@example.gov.uk)")
        return raw

    def local_authority(self, name: str) -> str:
        """An ONS (GSS) local-authority code, e.g. E09000008."""
        raw = self.text(name) or ""
        if not _GSS.fullmatch(raw.upper()):
            raise self.fail(name, f"{raw!r} is not a local-authority (ONS) code such as E09000008")
        return raw.upper()

    def choice(self, name: str, allowed: tuple[str, ...], *, required: bool = True) -> str | None:
        """One of `allowed` (case-insensitive), lower-cased."""
        raw = self.text(name, required=required)
        if raw is None:
            return None
        if raw.lower() not in allowed:
            raise self.fail(name, f"{raw[:40]!r} is not one of {', '.join(allowed)}")
        return raw.lower()

    def absent(self, name: str) -> bool:
        """True when the row does not give the field at all (or gives it as null)."""
        return self._values.get(name) is None

    def choices(self, name: str, allowed: tuple[str, ...]) -> list[str]:
        """A JSON list of values each one of `allowed`; [] when absent."""
        value = self._values.get(name)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(name, "must be a list of strings")
        wrong = [v[:40] for v in value if v.strip().lower() not in allowed]
        if wrong:
            raise self.fail(name, f"{wrong[0]!r} is not one of {', '.join(allowed)}")
        return list(dict.fromkeys(v.strip().lower() for v in value))

    def count(self, name: str) -> int:
        """A whole number, 0 or more (as written: digits only)."""
        value = self._values.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        else:
            raw = self.text(name) or ""
            if not _COUNT.fullmatch(raw):
                raise self.fail(name, f"{raw[:40]!r} is not a whole number of 0 or more")
            number = int(raw)
        if number < 0:
            raise self.fail(name, f"{number} is not a whole number of 0 or more")
        if number > FHIR_INTEGER_MAX:
            raise self.fail(name, f"{number} is too large")
        return number

    def day(self, name: str) -> When:
        """An ISO 8601 date (YYYY-MM-DD); its event time is the start of that day in the UK."""
        return self._to_day(name, self.text(name) or "")

    def optional_day(self, name: str) -> When | None:
        """An ISO 8601 date, or None when absent."""
        raw = self.text(name, required=False)
        return None if raw is None else self._to_day(name, raw)

    def when(self, name: str) -> When:
        """An ISO 8601 date, or date and time (no offset means UK local time)."""
        raw = self.text(name) or ""
        if _DATE.fullmatch(raw):
            return self._to_day(name, raw)
        if not _DATETIME.fullmatch(raw):
            raise self.fail(name, f"{raw[:40]!r} is not an ISO 8601 date or date-time{_uk_date_hint(raw)}")
        self._real_date(name, raw[:10])
        try:
            moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
            typed = moment
            moment = moment if moment.tzinfo else moment.replace(tzinfo=UK)
            utc = moment.astimezone(UTC)
        except (ValueError, OverflowError) as exc:
            raise self.fail(name, f"{raw[:40]!r} is not a real date and time") from exc
        if typed.tzinfo is None and utc.astimezone(UK).replace(tzinfo=None) != typed:
            raise self.fail(
                name,
                f"{raw[:40]!r} is not a UK time: the clocks go forward an hour over it that night; give it with "
                "its offset (+00:00 or +01:00)",
            )
        if abs(moment.utcoffset() or timedelta()) > timedelta(hours=14):
            raise self.fail(name, f"{raw[:40]!r} has a UTC offset beyond 14 hours")
        return When(moment.isoformat(), utc, moment.date(), timed=True)

    def not_future(self, name: str, when: When, now: datetime) -> When:
        """`when`, refused if later than `now` by more than CLOCK_SKEW (a date: after today in the UK)."""
        latest = now + CLOCK_SKEW
        today = latest_day(now)
        if when.timed and when.utc > latest:
            minutes = int(CLOCK_SKEW.total_seconds() // 60)
            said = f"now is {now.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}, give or take {minutes} minutes"
        elif not when.timed and when.day > today:
            said = f"today is {today.isoformat()} in the UK"
        else:
            return when
        raise self.fail(name, f"{when.fhir} is in the future ({said}): a row says when something happened")

    def _to_day(self, name: str, raw: str) -> When:
        if not _DATE.fullmatch(raw):
            raise self.fail(name, f"{raw[:40]!r} is not an ISO 8601 date (YYYY-MM-DD){_uk_date_hint(raw)}")
        day = self._real_date(name, raw)
        # the start of that day in the UK, as the API, the rules engine's answers and the KPIs read a day
        return When(day.isoformat(), datetime.combine(day, time(), tzinfo=UK).astimezone(UTC), day)

    def _real_date(self, name: str, raw: str) -> date:
        try:
            day = date.fromisoformat(raw)
        except ValueError as exc:
            raise self.fail(name, f"{raw!r} is not a real date") from exc
        if day.year < 1900:
            raise self.fail(name, f"{raw!r} is before 1900")
        return day


def _encodable(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


_AS_TEXT = ": format the column as Text, put the numbers back in from the source, and save the file again"


def _is_phone(digits: str, *, international: bool) -> bool:
    if international:  # E.164: a country code and at most 15 digits in all
        digits = digits.removeprefix("00")
        return 8 <= len(digits) <= 15 and not digits.startswith("0")
    return digits.startswith("0") and len(digits) in (10, 11)


_SCIENTIFIC = re.compile(r"[0-9](?:\.[0-9]+)?E\+?[0-9]+", re.IGNORECASE)
_UK_DATE = re.compile(r"([0-9]{1,2})/([0-9]{1,2})/([0-9]{4})(?:\s+[0-9]{1,2}:[0-9]{2}(?::[0-9]{2})?)?")


def _uk_date_hint(raw: str) -> str:
    """How to mend a date as Excel shows one in the UK (DD/MM/YYYY): never taken as one (a file written
    elsewhere may mean MM/DD), but named, with the ISO date it would be, so a sender can fix the column."""
    found = _UK_DATE.fullmatch(raw.strip())
    if not found:
        return ""
    day, month, year = (int(g) for g in found.groups())
    if not (1 <= month <= 12 and 1 <= day <= 31):
        return ""
    return (
        f": it looks like a date as Excel shows one in the UK (DD/MM/YYYY, {year:04d}-{month:02d}-{day:02d} as "
        "ISO 8601); format the column as yyyy-mm-dd (Format Cells, Custom) before saving the file"
    )
