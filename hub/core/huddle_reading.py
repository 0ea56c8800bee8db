"""How the huddle agenda (hub.core.huddle) reads and words what the record holds: each item's text
(a referral's reason and source, a flag's criterion, a discharge's ward and disposition, a task's
title and due time), when it happened, and the FHIR values it is read from (dates as UK days, ODS
codes, extensions, coded text). Pure, as the agenda is. An organisation is named as the record's
Organization with its ODS code names it (`names`, by code), else by its code; a discharge destination
by its NHS Data Dictionary meaning, never its bare code."""

from __future__ import annotations

from collections.abc import Callable, Mapping
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
    OUTCOME_EXTENSION,
    SOURCE_EXTENSION,
    TASK_SYSTEM,
)

Json = dict[str, Any]
UK = ZoneInfo("Europe/London")
ODS_SYSTEM = "https://fhir.nhs.uk/Id/ods-organization-code"
OVERDUE = "overdue"
CLOSED_TASK = FINAL  # a task no longer open (hub.core.task_status)
DISCHARGE_DESTINATION = "https://fhir.hl7.org.uk/CodeSystem/UKCore-DischargeDestinationEngland"
# UK Core's DischargeDestinationEngland (the NHS Data Dictionary's Discharge Destination, as listed in
# shared/STANDARDS.md section 3), in the few words an agenda needs after "to": the hospital adapter sends the code
# with no display (PV1-36/37 carry a code alone), and "to destination 19" means nothing to a meeting
DESTINATIONS = {
    "19": "usual place of residence",
    "29": "temporary place of residence",
    "30": "repatriation from a high security psychiatric hospital",
    "37": "court",
    "38": "penal establishment or police station",
    "48": "high security psychiatric hospital, Scotland",
    "49": "another NHS hospital (high security psychiatric)",
    "50": "another NHS hospital (medium secure unit)",
    "51": "another NHS hospital (general ward)",
    "52": "another NHS hospital (maternity or neonatal ward)",
    "53": "another NHS hospital (mental health or learning disability ward)",
    "54": "an NHS-run care home",
    "65": "local authority residential accommodation",
    "66": "local authority foster care",
    "79": "no destination (the patient died)",
    "84": "a non-NHS hospital (medium secure unit)",
    "85": "a non-NHS care home",
    "87": "a non-NHS hospital",
    "88": "a non-NHS hospice",
    "98": "no destination yet (the hospital stay had not finished)",
    "99": "a destination not known",
}
# Encounter.class as the hospital adapter codes it (v3-ActCode)
ENCOUNTER_CLASSES = {"EMER": "emergency", "IMP": "inpatient", "AMB": "outpatient", "PRENC": "pre-admission"}


def describe_referral(r: Json, names: Mapping[str, str] | None = None) -> str:
    requester = r.get("requester") or {}
    source = coded_text(next((e.get("valueCodeableConcept") for e in extensions(r, SOURCE_EXTENSION)), None))
    by = requester.get("display") or organisation_name(requester, names or {})
    reasons = "; ".join(str(c["text"]) for c in r.get("reasonCode") or [] if c.get("text"))
    text = "Referral" + (f" from {by}" if by else "") + (f" ({source})" if source else "")
    text += f": {reasons}" if reasons else ""
    # what became of it, where anything has (accepted, declined, withdrawn, contacted, attended: the
    # meeting need not discuss again whom the service has taken on); else a status other than active
    said = next((str(e["valueCode"]) for e in extensions(r, OUTCOME_EXTENSION) if e.get("valueCode")), None)
    shown = said or (r.get("status") if r.get("status") not in (None, "active") else None)
    return text + (f" [{shown}]" if shown else "")


def describe_flag(r: Json) -> str:
    criterion = next((str(e["valueCode"]) for e in extensions(r, CRITERION_EXTENSION) if e.get("valueCode")), None)
    return "Meets the case-finding criteria" + (f" ({criterion})" if criterion else "")


def describe_discharge(r: Json, names: Mapping[str, str] | None = None) -> str:
    provider = organisation_name(r.get("serviceProvider") or {}, names or {})
    disposition = destination_text((r.get("hospitalization") or {}).get("dischargeDisposition"))
    code = (r.get("class") or {}).get("code")
    kind = (r.get("class") or {}).get("display") or ENCOUNTER_CLASSES.get(str(code)) or code
    text = "Discharged" + (f" from {provider}" if provider else "") + (f" ({kind})" if kind else "")
    return text + (f" to {disposition}" if disposition else "")


def destination_text(concept: Json | None) -> str | None:
    """Where a discharge went, in words: the concept's own text, unless it only repeats a code; else a
    Discharge Destination coding's display, or its meaning (DESTINATIONS); a code none of those knows,
    or text of digits alone, is `destination <code>`."""
    if not concept:
        return None
    codes = {str(c.get("code")) for c in concept.get("coding") or [] if c.get("code")}
    text = concept.get("text")
    if text and str(text) not in codes:  # (a bare code as text alone, from PV1-36/37 unrecognised, too)
        return f"destination {text}" if str(text).isdigit() else str(text)
    for coding in concept.get("coding") or []:
        if coding.get("system") == DISCHARGE_DESTINATION:
            said = coding.get("display") or DESTINATIONS.get(str(coding.get("code")))
            if said:
                return str(said)
    found = coded_text(concept)
    return f"destination {found}" if found and found.isdigit() else found


def organisation_name(party: Json, names: Mapping[str, str]) -> str | None:
    """The name of an organisation a reference names (by ODS identifier or `Organization/<id>`), where
    `names` (by ODS code and by reference) holds it; else its ODS code; None if it names neither."""
    code = (party.get("identifier") or {}).get("value")
    ref = str(party.get("reference") or "")
    return names.get(str(code)) or names.get(ref) or (str(code) if code else None)


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
