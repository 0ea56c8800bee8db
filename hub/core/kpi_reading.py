"""What the commissioner's KPI fold (hub.core.kpis) reads from events' FHIR payloads, and how it
turns what it read into days, ages and bands: pure functions, no state."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from html import unescape
from typing import Any

from hub.core.errors import InvalidMessageError
from hub.core.fhir_read import ODS_SYSTEM, of_kind, referral_source
from hub.core.huddle import UK
from hub.core.pic_summary import NONE_RECORDED, SECTIONS
from hub.core.ports import Json
from schemas.events import coordination as co

UNKNOWN_AGE = "unknown"
BANDS = ((0, 65, "<65"), (65, 75, "65-74"), (75, 85, "75-84"), (85, 200, "85+"))


def flagged(resource: Json, url: str) -> bool:
    """Whether the resource carries the extension `url` with valueBoolean true."""
    return any(e.get("url") == url and e.get("valueBoolean") is True for e in resource.get("extension") or [])


def why_unreadable(exc: Exception) -> str:
    if isinstance(exc, InvalidMessageError):
        return exc.diagnostics
    return f"a field of the wrong shape ({type(exc).__name__}: {exc})"


def fhir_time(value: Any, default: datetime) -> datetime:
    """A FHIR dateTime as an instant in UTC; one without an offset (or a bare date) is UK local time.
    (In UTC, not UK time: Python subtracts two times of one zone as clock times, so a wait across a
    clock change would be an hour out.)"""
    if not isinstance(value, str):
        return default
    try:
        parsed = datetime.fromisoformat(value)
        parsed = parsed if parsed.tzinfo else parsed.replace(tzinfo=UK)
        parsed.astimezone(UK)  # an instant too near year 1 or 9999 to have a UK day is no time
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        return default


def practice_named(patient: Json, resources: list[Json]) -> str | None:
    """The practice a Patient names: by ODS identifier, or by reference to an Organization the event
    carries (a hospital's ADT: PD1-3)."""
    for gp in patient.get("generalPractitioner") or []:
        ident = gp.get("identifier") or {}
        if ident.get("system") == ODS_SYSTEM and ident.get("value"):
            return str(ident["value"])
        reference = str(gp.get("reference") or "")
        for org in of_kind(resources, "Organization") if reference.startswith("Organization/") else []:
            if f"Organization/{org.get('id')}" == reference:
                code = next(
                    (i.get("value") for i in org.get("identifier") or [] if i.get("system") == ODS_SYSTEM), None
                )
                if code:
                    return str(code)
    return None


def said_near(said: list[tuple[datetime, Any]] | None, at: datetime) -> Any:
    """What was said latest at or before `at` (the later said at a tie: in their partition's order),
    else what was first said after it; None when nothing was."""
    if not said:
        return None
    before = [(t, i) for i, (t, _) in enumerate(said) if t <= at]
    if before:
        return said[max(before)[1]][1]
    return said[min((t, i) for i, (t, _) in enumerate(said))[1]][1]


def days_between(start: datetime, end: datetime) -> int:
    """Whole UK days from one instant's day to another's (4 weeks is a count of days, not of hours)."""
    return (end.astimezone(UK).date() - start.astimezone(UK).date()).days


_TAGS = re.compile(r"<[^>]*>")
_SEPARATOR = re.compile(r";(?![^()]*\))")  # a ';' not inside brackets
_BULLET = re.compile(r"^\s*(?:[-*\u2022\u2023\u25e6\u2043]+|\d+[.)])\s*")
_NONE = frozenset({NONE_RECORDED.casefold(), "none", "nil", "n/a", "no", "no onward referrals", "no onward referral"})
IN_A_SUMMARY = "named in a PIC summary"  # the breakdown of destinations a coordinator wrote in a summary
ONWARD_TITLE = dict(SECTIONS)["onward"]


def onward_destinations(summary: Json) -> list[str]:
    """The destinations a PIC summary's Onward referrals section names: one a line, or separated by ';'
    (not one inside brackets), a list's bullet or number dropped, each once (whatever its case), and
    none of the ways of saying there were none."""
    for section in summary.get("section") or []:
        if section.get("title") == ONWARD_TITLE:
            text = unescape(_TAGS.sub("\n", str((section.get("text") or {}).get("div") or "")))
            found: dict[str, str] = {}
            for line in text.splitlines():
                for part in _SEPARATOR.split(line):
                    said = " ".join(_BULLET.sub("", part).split())
                    if said and said.casefold().rstrip(".") not in _NONE:
                        found.setdefault(said.casefold(), said)
            return list(found.values())
    return []


def source_of(request: Json) -> str:
    """The referral's source: its coding in CareHub's referral-source system (as the API checks it),
    else the first coding's code, whatever its system (a file adapter's older events)."""
    said = referral_source(request)
    if said is not None:
        return said
    for ext in request.get("extension") or []:
        if ext.get("url") == co.SOURCE_EXTENSION:
            for coding in (ext.get("valueCodeableConcept") or {}).get("coding") or []:
                return str(coding.get("code"))
    return "not recorded"


def born_on(birth: Any) -> date | None:
    """A FHIR birthDate as a day; a partial one (a year, a month) or a malformed one is none."""
    if not isinstance(birth, str) or len(birth) < 10:
        return None
    try:
        return date.fromisoformat(birth[:10])
    except ValueError:
        return None


def age_at(born: date | None, at: datetime) -> int | None:
    if born is None:
        return None
    day = at.astimezone(UK).date()  # a birthday is a UK day
    return day.year - born.year - ((day.month, day.day) < (born.month, born.day))


def band_labels() -> list[str]:
    return [label for _, _, label in BANDS] + [UNKNOWN_AGE]


def band(age: int | None) -> str:
    for low, high, label in BANDS:
        if age is not None and low <= age < high:
            return label
    return UNKNOWN_AGE
