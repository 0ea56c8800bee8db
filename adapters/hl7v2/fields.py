"""HL7 v2 data types -> FHIR JSON values: TS/DTM time stamps, XPN names, XAD addresses, XTN."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from hub.core.errors import InvalidMessageError
from hub.core.skew import CLOCK_SKEW

UK = ZoneInfo("Europe/London")
ODS_SYSTEM = "https://fhir.nhs.uk/Id/ods-organization-code"
MRN_SYSTEM = "https://fhir.nhs.uk/Id/MRN/"  # + the assigning authority (or sender)
_TS = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.\d+)?([+-]\d{4})?$")


def timestamp(text: str, where: str) -> datetime | None:
    """An HL7 time stamp as an aware datetime; no offset means UK local time (GMT or BST)."""
    if not text:
        return None
    match = _TS.match(text)
    if not match:
        raise InvalidMessageError(f"{text!r} is not an HL7 time stamp (YYYYMMDDHHMMSS)", (where,), code="value")
    year, month, day, hour, minute, second, offset = match.groups()
    try:
        naive = datetime(  # noqa: DTZ001 - the zone is attached just below
            int(year), int(month or 1), int(day or 1), int(hour or 0), int(minute or 0), int(second or 0)
        )
    except ValueError as exc:
        raise InvalidMessageError(f"{text!r} is not a real date and time", (where,), code="value") from exc
    moment = naive.replace(tzinfo=_zone(offset, text, where) if offset else UK)
    try:  # an offset can push the first or last representable day out of range in UTC
        moment.astimezone(UTC)
    except OverflowError as exc:
        raise InvalidMessageError(f"{text!r} is out of the supported date range", (where,), code="value") from exc
    return moment


def period_end(moment: datetime, text: str) -> datetime:
    """Where the period a time stamp names ends (exclusive), by its precision: `20261103` is the
    whole of that day, so a discharge on it is not before an admission at 10:00 that day."""
    digits = len(text) - len(text.lstrip("0123456789"))
    if digits <= 6:  # a year or a month
        year, month = (moment.year + 1, 1) if digits <= 4 or moment.month == 12 else (moment.year, moment.month + 1)
        return moment.replace(year=year, month=month) if year <= 9999 else datetime.max.replace(tzinfo=moment.tzinfo)
    unit = {8: timedelta(days=1), 10: timedelta(hours=1), 12: timedelta(minutes=1)}.get(digits, timedelta(seconds=1))
    return moment + unit if moment.year < 9999 else datetime.max.replace(tzinfo=moment.tzinfo)


def _zone(offset: str, text: str, where: str) -> timezone:
    hours, minutes = int(offset[1:3]), int(offset[3:5])
    if hours > 23 or minutes > 59:
        raise InvalidMessageError(f"{text!r} has an impossible UTC offset {offset}", (where,), code="value")
    sign = -1 if offset[0] == "-" else 1
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


def fhir_datetime(value: datetime) -> str:
    """FHIR dateTime text with the offset kept."""
    return value.isoformat()


def utc(value: datetime) -> datetime:
    """The same instant in UTC."""
    return value.astimezone(UTC)


def birth_date(text: str, where: str = "PID-7") -> str | None:
    """PID-7 as a FHIR date (YYYY, YYYY-MM or YYYY-MM-DD); a date that cannot exist is an error."""
    if not text:
        return None
    moment = timestamp(text, where)
    if moment is None:
        return None
    digits = min(len(text.split("+")[0].split("-")[0]), 8)
    return moment.date().isoformat()[: {4: 4, 6: 7}.get(digits, 10)]


# XPN-7 name type (table 0200) -> HumanName.use, the v2-to-FHIR IG's ConceptMap table-hl70200-to-name-use;
# the codes it leaves unmatched (A alias or assigned, B birth, C adopted, P partner's, U unknown...) say no use
NAME_USE = {"BAD": "old", "D": "usual", "L": "official", "M": "maiden", "MSK": "anonymous", "N": "nickname"}
NAME_USE |= {"NAV": "temp", "R": "official", "TEMP": "temp"}


def human_name(xpn: list[str]) -> dict[str, object] | None:
    """XPN: family^given^middle^suffix^prefix^degree^name type. Without a name type the name is the
    official one (as the hub has always read PID-5); with one the IG does not map, it has no use."""
    family, given = xpn[0] if xpn else "", [g for g in xpn[1:3] if g] if len(xpn) > 1 else []
    if not family and not given:
        return None
    kind = _at(xpn, 6).upper()
    use = NAME_USE.get(kind) if kind else "official"
    name: dict[str, object] = {"use": use} if use else {}
    if family:
        name["family"] = family
    if given:
        name["given"] = given
    if len(xpn) > 4 and xpn[4]:
        name["prefix"] = [xpn[4]]
    return name


def address(xad: list[str]) -> dict[str, object] | None:
    """XAD: street^other^city^state^postcode^country."""
    lines = [p for p in xad[:2] if p]
    parts = {"city": _at(xad, 2), "district": _at(xad, 3), "postalCode": _at(xad, 4), "country": _at(xad, 5)}
    found: dict[str, object] = {k: v for k, v in parts.items() if v}
    if lines:
        found["line"] = lines
    return found or None


def telecom(xtn: list[str]) -> dict[str, object] | None:
    """XTN: number, or email in component 4."""
    if _at(xtn, 3) and "@" in _at(xtn, 3):
        return {"system": "email", "value": _at(xtn, 3)}
    number = xtn[0] if xtn and xtn[0] else _at(xtn, 11)
    return {"system": "phone", "value": number} if number else None


def _at(parts: list[str], i: int) -> str:
    return parts[i] if i < len(parts) else ""


TIMES = {
    "EVN-2": "event time",
    "MSH-7": "message time",
    "PV1-44": "admission time",
    "PV1-45": "discharge time",
    "PID-7": "date of birth",
    "PID-29": "date of death",
}


def not_future(moment: datetime | None, latest: datetime | None, where: str, said: str = "") -> None:
    """A time later than `latest` (the hub's clock plus CLOCK_SKEW) cannot have happened yet. (`said`:
    the time as the message gave it, where that reads better than the moment it begins.)"""
    if moment is not None and latest is not None and moment > latest:
        minutes = int(CLOCK_SKEW.total_seconds() // 60)
        raise InvalidMessageError(
            f"{where} ({TIMES[where]}) {said or fhir_datetime(moment)} is in the future: later than the hub's clock"
            f" by more than the {minutes} minutes allowed for clock skew",
            (where,),
            code="value",
        )
