"""The PIC summary: the coordination service's discharge letter to the GP, as a FHIR document.

A Composition (type SNOMED 373942005 "Discharge summary", as UK Core's discharge Composition) with
the sections the Croydon specification asks for: reason for referral, goals and outcomes,
interventions, onward referrals and follow-up. `document` wraps it with the resources it cites into
a FHIR document Bundle (Composition first, then the Patient, the episode and the referrals); `letter`
is that document addressed to the person's practice (a Patient stub naming it), as the hub sends it.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from html import escape

from hub.core.fhir_read import ODS_CODE
from hub.core.identity import stable_id
from hub.core.ports import Json

SNOMED = "http://snomed.info/sct"
ODS_SYSTEM = "https://fhir.nhs.uk/Id/ods-organization-code"
NHS_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"
BASE = "https://carehub.invalid/fhir"
XHTML = "http://www.w3.org/1999/xhtml"
# the Croydon specification: the PIC summary reaches the GP within 48 h of discharge from the service
# (the KPI measures against it; the task engine uses it where the rules give the letter no deadline)
LETTER_DUE = timedelta(hours=48)
OUTPUT_SYSTEM = "https://carehub.invalid/CodeSystem/coordination-task-output"  # Task.output.type codes
PRACTICE_OUTPUT = "gp-practice"  # the output by which a coordinator names the practice they found
NONE_RECORDED = "None recorded"  # what a section left empty says
SECTIONS = (
    ("reason", "Reason for referral"),
    ("goals", "Goals and outcomes"),
    ("interventions", "Interventions"),
    ("onward", "Onward referrals"),
    ("follow-up", "Follow-up"),
)


def composition(
    *, episode: Json, person: str, at: datetime, author: str, author_name: str, sections: dict[str, str]
) -> Json:
    """The PIC summary Composition for a closed episode."""
    return {
        "resourceType": "Composition",
        "id": stable_id("pic-summary", str(episode["id"])),
        "status": "final",
        "type": {"coding": [{"system": SNOMED, "code": "373942005", "display": "Discharge summary"}]},
        "subject": {"reference": f"Patient/{person}"},
        "date": at.isoformat(),
        "author": [{"identifier": {"system": ODS_SYSTEM, "value": author}, "display": author_name}],
        "title": "PIC summary",
        "section": [
            {
                "title": title,
                "text": {
                    "status": "generated",
                    "div": f'<div xmlns="{XHTML}">{escape(sections.get(key) or NONE_RECORDED)}</div>',
                },
            }
            for key, title in SECTIONS
        ],
    }


def document(summary: Json, *, patient: Json | None, episode: Json, referrals: list[Json], at: datetime) -> Json:
    """The FHIR document Bundle sent to the practice."""
    entries = [summary, *([patient] if patient else []), episode, *referrals]
    return {
        "resourceType": "Bundle",
        "id": stable_id("pic-summary-document", str(summary["id"])),
        "identifier": {"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{stable_id('pic-doc', str(summary['id']))}"},
        "type": "document",
        "timestamp": at.isoformat(),
        "entry": [{"fullUrl": f"{BASE}/{r['resourceType']}/{r['id']}", "resource": _bare(r)} for r in entries],
    }


def letter(summary: Json, *, person: str, nhs: str | None, practice: str, episode: Json, at: datetime) -> Json:
    """The document for the person's practice: GP subscriptions deliver it by the practice its Patient names."""
    patient: Json = {"resourceType": "Patient", "id": person}
    if nhs:
        patient["identifier"] = [{"system": NHS_SYSTEM, "value": nhs}]
    patient["generalPractitioner"] = [{"identifier": {"system": ODS_SYSTEM, "value": practice}}]
    return document(summary, patient=patient, episode=episode, referrals=[], at=at)


def _bare(resource: Json) -> Json:
    return {k: v for k, v in resource.items() if k != "meta"}


def practice_output(code: str) -> Json:
    """The output of a find-the-practice Task (hub.core.tasks) a coordinator completes: the practice they found."""
    return {
        "type": {"coding": [{"system": OUTPUT_SYSTEM, "code": PRACTICE_OUTPUT}], "text": "The person's GP practice"},
        "valueReference": {"identifier": {"system": ODS_SYSTEM, "value": code}},
    }


def practice_found(task: Json) -> str | None:
    """The GP practice (ODS code) a find-the-practice Task names as its output, if it names one (a
    payload of any other shape names none: it comes from the log, and is never trusted to be right)."""
    outputs = task.get("output")
    for output in outputs if isinstance(outputs, list) else []:
        kind = output.get("type") if isinstance(output, dict) else None
        codings = kind.get("coding") if isinstance(kind, dict) else None
        if not isinstance(codings, list) or not any(
            isinstance(c, dict) and (c.get("system"), c.get("code")) == (OUTPUT_SYSTEM, PRACTICE_OUTPUT)
            for c in codings
        ):
            continue
        ref = output.get("valueReference")
        ident = ref.get("identifier") if isinstance(ref, dict) else None
        code = ident.get("value") if isinstance(ident, dict) and ident.get("system") == ODS_SYSTEM else None
        if isinstance(code, str) and ODS_CODE.fullmatch(code):
            return code
    return None
