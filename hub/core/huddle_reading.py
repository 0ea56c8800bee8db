"""How the huddle agenda (hub.core.huddle) reads and words what the record holds: each item's text
(a referral's reason and source, a flag's criterion, a discharge's ward and disposition, a task's
title and due time), when it happened, and the FHIR values it is read from (dates as UK days, ODS
codes, extensions, coded text). Pure, as the agenda is."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from hub.core.task_status import FINAL
from schemas.events.coordination import (
    BUSINESS_STATUS_SYSTEM,
    CONTACT_SYSTEM,
    CRITERION_EXTENSION,
    ELIGIBLE,
    FLAG_SYSTEM,
    SOURCE_EXTENSION,
    TASK_SYSTEM,
)

Json = dict[str, Any]
UK = ZoneInfo("Europe/London")
ODS_SYSTEM = "https://fhir.nhs.uk/Id/ods-organization-code"
OVERDUE = "overdue"
CLOSED_TASK = FINAL  # a task no longer open (hub.core.task_status)


def describe_referral(r: Json) -> str:
    requester = r.get("requester") or {}
    source = coded_text(next((e.get("valueCodeableConcept") for e in extensions(r, SOURCE_EXTENSION)), None))
    by = requester.get("display") or (requester.get("identifier") or {}).get("value")
    reasons = "; ".join(str(c["text"]) for c in r.get("reasonCode") or [] if c.get("text"))
    text = "Referral" + (f" from {by}" if by else "") + (f" ({source})" if source else "")
    text += f": {reasons}" if reasons else ""
    return text + (f" [{r['status']}]" if r.get("status") not in (None, "active") else "")


def describe_flag(r: Json) -> str:
    criterion = next((str(e["valueCode"]) for e in extensions(r, CRITERION_EXTENSION) if e.get("valueCode")), None)
    return "Meets the case-finding criteria" + (f" ({criterion})" if criterion else "")


def describe_discharge(r: Json) -> str:
    provider = (r.get("serviceProvider") or {}).get("identifier", {}).get("value")
    disposition = coded_text((r.get("hospitalization") or {}).get("dischargeDisposition"))
    kind = (r.get("class") or {}).get("display") or (r.get("class") or {}).get("code")
    text = "Discharged" + (f" from {provider}" if provider else "") + (f" ({kind})" if kind else "")
    if disposition and disposition.isdigit():  # a bare NHS discharge destination code
        disposition = f"destination {disposition}"
    return text + (f" to {disposition}" if disposition else "")


def describe_task(r: Json) -> str:
    code = r.get("code") or {}
    coding: Json = next((c for c in code.get("coding") or [] if c.get("system") == TASK_SYSTEM), {})
    name = code.get("text") or coding.get("display") or coding.get("code") or "Task"
    owner = r.get("owner") or {}
    who = owner.get("display") or (owner.get("identifier") or {}).get("value")
    return f"{name}" + (f", owner {who}" if who else "") + f" [{r.get('status', 'unknown')}]"


def referral_time(in_window: Callable[[str | None], bool]) -> Callable[[Json], str | None]:
    def keep(r: Json) -> str | None:
        ok = r.get("resourceType") == "ServiceRequest" and r.get("status") != "entered-in-error"
        return str(r["authoredOn"]) if ok and in_window(r.get("authoredOn")) else None

    return keep


def flag_time(in_window: Callable[[str | None], bool]) -> Callable[[Json], str | None]:
    def keep(r: Json) -> str | None:
        codings = (r.get("code") or {}).get("coding") or []
        eligible = any(c.get("system") == FLAG_SYSTEM and c.get("code") == ELIGIBLE for c in codings)
        started = (r.get("period") or {}).get("start")
        ok = r.get("resourceType") == "Flag" and r.get("status") == "active" and eligible
        return str(started) if ok and in_window(started) else None

    return keep


def discharge_time(in_window: Callable[[str | None], bool]) -> Callable[[Json], str | None]:
    def keep(r: Json) -> str | None:
        if r.get("resourceType") != "Encounter" or r.get("status") != "finished":
            return None
        if any(c.get("system") == CONTACT_SYSTEM for t in r.get("type") or [] for c in t.get("coding") or []):
            return None
        ended = (r.get("period") or {}).get("end")
        return str(ended) if in_window(ended) else None

    return keep


def overdue_due(r: Json) -> str | None:
    if r.get("resourceType") != "Task" or r.get("status") in CLOSED_TASK:
        return None
    business = (r.get("businessStatus") or {}).get("coding") or []
    if not any(c.get("system") == BUSINESS_STATUS_SYSTEM and c.get("code") == OVERDUE for c in business):
        return None
    return str(((r.get("restriction") or {}).get("period") or {}).get("end") or "")


def display_name(patient: Json) -> str | None:
    """`Given FAMILY` from the official (else first) name; its text if that is all there is."""
    names = patient.get("name") or []
    name = next((n for n in names if n.get("use") == "official"), names[0] if names else None)
    if not name:
        return None
    parts = [*(name.get("given") or []), name.get("family") or ""]
    return " ".join(p for p in parts if p) or name.get("text") or None


def person_in(resource: Json) -> str | None:
    for name in ("subject", "patient", "for"):
        ref = str((resource.get(name) or {}).get("reference", ""))
        if ref.startswith("Patient/"):
            return ref.removeprefix("Patient/")
    return None


def ods_codes(organization: Json) -> set[str]:
    return {str(i["value"]) for i in organization.get("identifier") or [] if i.get("system") == ODS_SYSTEM}


def extensions(resource: Json, url: str) -> list[Json]:
    return [e for e in resource.get("extension") or [] if e.get("url") == url]


def coded_text(concept: Json | None) -> str | None:
    if not concept:
        return None
    coding = (concept.get("coding") or [{}])[0]
    found = concept.get("text") or coding.get("display") or coding.get("code")
    return str(found) if found else None


def instant_of(text: str | None) -> datetime | None:
    """A FHIR date or dateTime as an instant; a bare date, or a time without offset, is UK local time."""
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:  # a partial date (year, year-month) is no day of any week
        return None
    return value if value.tzinfo else value.replace(tzinfo=UK)


def local_day(text: str) -> date | None:
    """The Europe/London day a FHIR date or dateTime falls on."""
    instant = instant_of(text)
    return instant.astimezone(UK).date() if instant else None
