"""The PIC summary: the coordination service's discharge letter to the GP, as a FHIR document.

A Composition (type SNOMED 373942005 "Discharge summary", as UK Core's discharge Composition) with
the sections the Croydon specification asks for: reason for referral, goals and outcomes,
interventions, onward referrals and follow-up. `document` wraps it with the resources it cites into
a FHIR document Bundle (Composition first, then the Patient, the episode and the referrals); `letter`
is that document addressed to the person's practice (a Patient stub naming it), signed by the closing
coordinator and the service (contained in the Composition: the hub knows a coordinator by their id
alone, and the service by its name and ODS code), as the rules engine publishes it.

What the practice receives (hub.core.delivery, consumers.delivery): `for_practice` gives the letter's
Patient the person's name, date of birth, NHS number and address as the record holds them (the
practice files the letter by two identifiers) and leaves the episode on the record (its referrals
are not in the letter: a document carries every resource it refers to); `delivered_document` makes
what the policy let through a FHIR R4 document (type `document`, an identifier, a timestamp, the
Composition first, absolute fullUrls) when the Composition and its Patient both went; and
`mailbox_name` names its mailbox file so a practice can sort and find it. Only a delivery that
carried the Composition whole to the practice the letter is addressed to is the practice's receipt
(`received_summary`); a receipt names its recipient and letter (`receipt_names`), so the folds can check it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from html import escape
from zoneinfo import ZoneInfo

from hub.core.fhir_read import ODS_CODE, care_manager
from hub.core.identity import stable_id
from hub.core.ports import Json
from schemas.events.coordination import COORDINATOR_SYSTEM

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
COORDINATOR = "coordinator"  # the contained Practitioner's id: the coordinator who closed the episode
SERVICE = "service"  # the contained Organization's id: the coordination service
DEMOGRAPHICS = ("name", "birthDate", "address")  # what the letter's Patient takes from the record's
UK = ZoneInfo("Europe/London")  # a mailbox file is named by the letter's UK date


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


def letter(
    summary: Json,
    *,
    person: str,
    nhs: str | None,
    practice: str,
    episode: Json,
    at: datetime,
    service: tuple[str, str] | None = None,
) -> Json:
    """The document for the person's practice: GP subscriptions deliver it by the practice its Patient
    names. `service` (ODS code, name) signs it with the closing coordinator (the episode's care manager)."""
    patient: Json = {"resourceType": "Patient", "id": person}
    if nhs:
        patient["identifier"] = [{"system": NHS_SYSTEM, "value": nhs}]
    patient["generalPractitioner"] = [{"identifier": {"system": ODS_SYSTEM, "value": practice}}]
    signed = signed_by(summary, episode, service) if service else summary
    return document(signed, patient=patient, episode=episode, referrals=[], at=at)


def signed_by(summary: Json, episode: Json, service: tuple[str, str]) -> Json:
    """The summary naming whom the practice can ask about it: the coordinator who closed the episode
    (a Practitioner known by their coordinator id, of the service) and the service (an Organization:
    its name and ODS code; the rules give it no phone or email, so none is given), both contained;
    and the stay on the caseload it closes (`event.period`)."""
    ods, name = service
    org: Json = {
        "resourceType": "Organization",
        "id": SERVICE,
        "identifier": [{"system": ODS_SYSTEM, "value": ods}],
        "name": name,
    }
    by_service: Json = {"reference": f"#{SERVICE}", "identifier": {"system": ODS_SYSTEM, "value": ods}, "display": name}
    contained, authors = [org], [by_service]
    coordinator = care_manager(episode)
    if coordinator:
        shown = f"{coordinator}, {name} ({ods})"
        contained.insert(
            0,
            {
                "resourceType": "Practitioner",
                "id": COORDINATOR,
                "identifier": [{"system": COORDINATOR_SYSTEM, "value": coordinator}],
                "name": [{"text": shown}],
            },
        )
        authors.insert(0, {"reference": f"#{COORDINATOR}", "display": shown})
    signed = {k: v for k, v in summary.items() if k not in ("contained", "author", "custodian", "event")}
    signed |= {"contained": contained, "author": authors, "custodian": by_service}
    period = episode.get("period")
    if isinstance(period, dict) and period:
        signed["event"] = [{"period": period}]
    return signed


def for_practice(resources: Sequence[Json], held: Json | None) -> list[Json]:
    """The letter's resources as its practice is to receive them, before the policy decides each: its
    Patient with the person's name, date of birth and address (`DEMOGRAPHICS`) and NHS number as
    `held` (the record's Patient) gives them, carrying the record's security labels, so that the
    policy judges the demographics for what they are; the episode left out (it names referrals the
    letter does not carry: the Composition gives the stay's dates and the coordinator)."""
    out: list[Json] = []
    for resource in resources:
        kind = resource.get("resourceType")
        if kind == "EpisodeOfCare":
            continue
        if kind == "Patient" and held is not None:
            resource = _with_demographics(resource, held)
        out.append(resource)
    return out


def _with_demographics(patient: Json, held: Json) -> Json:
    said = dict(patient)
    for key in DEMOGRAPHICS:
        if held.get(key):
            said[key] = held[key]
    nhs = [i for i in _dicts(held.get("identifier")) if i.get("system") == NHS_SYSTEM and i.get("value")]
    if nhs:
        said["identifier"] = nhs[:1]
    labels = (held.get("meta") or {}).get("security")
    if labels:
        said["meta"] = {**(said.get("meta") or {}), "security": labels}
    order = ["resourceType", "id", "meta", "identifier", *DEMOGRAPHICS, "generalPractitioner"]
    return {k: said[k] for k in dict.fromkeys([*order, *said]) if k in said}


def delivered_document(bundle: Json, resources: Sequence[Json]) -> Json | None:
    """What a delivery permitted of a letter (`resources`) as a FHIR R4 document Bundle: `bundle` (the
    delivery's Bundle: id, timestamp, meta) typed `document`, with an identifier, the Composition
    first and every entry under an absolute fullUrl. None when the Composition or the Patient it is
    about was withheld: that is no whole document (the delivery goes as a `collection`, as any other)."""
    composition = next((r for r in resources if r.get("resourceType") == "Composition"), None)
    if composition is None:
        return None
    subject = str((composition.get("subject") or {}).get("reference", ""))
    if not any(f"{r.get('resourceType')}/{r.get('id')}" == subject for r in resources):
        return None
    ordered = [composition, *(r for r in resources if r is not composition)]
    return {
        **bundle,
        "type": "document",
        "identifier": {"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{stable_id('pic-delivery', bundle['id'])}"},
        "entry": [{"fullUrl": f"{BASE}/{r['resourceType']}/{r['id']}", "resource": r} for r in ordered],
    }


_NHS_NUMBER = re.compile(r"\d{10}")


def mailbox_name(event_id: str, at: datetime, resources: Sequence[Json]) -> str:
    """A letter's mailbox file name, so a practice can sort its letters by day and find a patient's:
    `<yyyymmdd>-<NHS number>-pic-summary-<first 8 of the event id>.json` (the UK date of the letter;
    the NHS number only where the delivery carries the Patient that gives it, as the policy let it
    through: never otherwise, as the file name would disclose it)."""
    nhs = next(
        (
            str(i["value"])
            for r in resources
            if r.get("resourceType") == "Patient"
            for i in _dicts(r.get("identifier"))
            if i.get("system") == NHS_SYSTEM and _NHS_NUMBER.fullmatch(str(i.get("value")))
        ),
        None,
    )
    day = at.astimezone(UK).strftime("%Y%m%d")
    short = re.sub(r"[^A-Za-z0-9]", "", event_id)[:8] or "letter"
    return f"{day}-{nhs}-pic-summary-{short}.json" if nhs else f"{day}-pic-summary-{short}.json"


def _dicts(items: object) -> list[Json]:
    return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []


def _bare(resource: Json) -> Json:
    return {k: v for k, v in resource.items() if k != "meta"}


def letter_practice(resources: Sequence[Json]) -> str | None:
    """The practice a letter (a PIC summary event's resources, as `letter` makes them) is addressed
    to: the ODS code its Patient, the Composition's subject, names as its general practitioner."""
    composition = next((r for r in resources if r.get("resourceType") == "Composition"), None)
    subject = str(((composition or {}).get("subject") or {}).get("reference", ""))
    for patient in resources:
        if patient.get("resourceType") != "Patient" or f"Patient/{patient.get('id')}" != subject:
            continue
        for gp in _dicts(patient.get("generalPractitioner")):
            ident = gp.get("identifier")
            if isinstance(ident, dict) and ident.get("system") == ODS_SYSTEM and ident.get("value"):
                return str(ident["value"])
    return None


def summary_sent(sent: Json) -> Json | None:
    """The Composition a delivery's Bundle (`sent`, as it left at its content level) carried whole:
    none at `empty` or `id-only`, nor where the policy withheld it (no letter came)."""
    for entry in _dicts(sent.get("entry")):
        resource = entry.get("resource")
        if isinstance(resource, dict) and resource.get("resourceType") == "Composition":
            return resource
    return None


def received_summary(org: str, practice: str | None, sent: Json) -> Json | None:
    """The Composition of which a delivery to a subscription of `org`, of a letter addressed to
    `practice` (letter_practice), sent as `sent`, is the practice's receipt: where the summary itself
    went, to that practice. Any other subscriber's copy (another practice's, a council's) is theirs
    alone, a receipt of nothing."""
    same = practice is not None and org.strip().upper() == practice.strip().upper()  # (PD1-3 may be lower case)
    return summary_sent(sent) if same else None


def receipt_names(communication: Json) -> tuple[str | None, str | None]:
    """The recipient (ODS code) and the letter (its Composition's id) a receipt names, where it names
    them (a Communication that names neither, as a hand-made log's may, gives neither)."""
    recipients = [
        ident.get("value")
        for r in _dicts(communication.get("recipient"))
        if isinstance(ident := r.get("identifier"), dict) and ident.get("system") == ODS_SYSTEM
    ]
    abouts = [str(a.get("reference", "")) for a in _dicts(communication.get("about"))]
    letters = [a.removeprefix("Composition/") for a in abouts if a.startswith("Composition/")]
    recipient = recipients[0] if recipients and isinstance(recipients[0], str) else None
    return recipient, letters[0] if letters else None


def by_its_practice(recipient: str | None, letter: str | None, addressed: Mapping[str, str | None]) -> bool:
    """Whether a receipt naming `recipient` and `letter` (receipt_names) may be the practice's, given
    the practice each letter on the log was addressed to (`addressed`, by Composition id): not when it
    names another recipient (a log from before only the practice's delivery was a receipt); one that
    names neither, or a letter not on the log, is taken as it always was."""
    practice = addressed.get(letter) if letter is not None else None
    return recipient is None or practice is None or recipient.strip().upper() == practice.strip().upper()


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
