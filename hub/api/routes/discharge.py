"""POST /fhir/Bundle: a hospital's discharge summary, a FHIR R4 document Bundle, taken onto the log.

The document (Bundle.type `document`, a Composition first whose type is SNOMED 373942005 Discharge
summary, the Patient it is about with a valid NHS number, usually the Encounter of the stay) becomes
one event, DISCHARGE_SUMMARY_RECEIVED, from the token's organisation: the Composition (custodian the
sender), the Encounter and a Patient stub (the NHS number only: what the hospital's ADT or the
practice says of the person stands). The same document again (its Bundle.identifier, else the
Composition's identifier) is the same event id and the same ids, applied once; once the record holds
it, it is answered 200 and nothing is sent. Bad input is a 400 OperationOutcome naming the element,
and is kept whole on the dead-letter topic (`refused`, as the intake adapters keep theirs), so an
operator sees it in `carehub deadletters`; a dead letter Kafka does not take is logged, and the
sender is still told why the document was refused.

No `from __future__ import annotations` here: FastAPI reads these annotations at runtime.
"""

import contextlib
import hashlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request
from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.composition import Composition
from fhir.resources.R4B.encounter import Encounter
from fhir.resources.R4B.patient import Patient
from pydantic import ValidationError

from hub.api.auth import Principal, TokenVerifier
from hub.api.outcomes import FhirResponse
from hub.api.routes.coordination import patient_stub
from hub.api.routes.coordination_commands import ODS_SYSTEM, CoordinationApi, emit, refuse_unless_sender
from hub.api.routes.coordination_input import at_time, json_body
from hub.api.routes.fhir import bearer_caller, read_body
from hub.core import nhs_number
from hub.core.errors import HubError, InfrastructureError, InvalidMessageError
from hub.core.identity import person_key, stable_id
from hub.core.ports import Json
from schemas.events.document import DISCHARGE_SUMMARY_RECEIVED, DISCHARGE_SUMMARY_SNOMED

__all__ = ["Refused", "router"]

log = logging.getLogger(__name__)
Refused = Callable[[bytes, HubError, str], Awaitable[object]]  # keep (raw body, why, sender) whole: dead letter

SNOMED = "http://snomed.info/sct"
BUNDLE_IN = {
    "requestBody": {
        "required": True,
        "content": {
            "application/fhir+json": {
                "schema": {
                    "type": "object",
                    "required": ["resourceType", "type", "entry"],
                    "properties": {
                        "resourceType": {"const": "Bundle"},
                        "type": {"const": "document"},
                        "identifier": {"type": "object"},
                        "entry": {"type": "array", "items": {"type": "object"}},
                    },
                }
            }
        },
    }
}


def router(api_: CoordinationApi, tokens: TokenVerifier, refused: Refused | None = None) -> APIRouter:
    """The discharge-summary intake; what it refuses as bad input is handed to `refused` whole."""
    api = APIRouter(default_response_class=FhirResponse)
    Caller = Annotated[Principal, Depends(bearer_caller(tokens))]  # noqa: N806 - a type alias

    @api.post(
        "/fhir/Bundle",
        status_code=201,
        summary="A hospital's discharge summary (FHIR document Bundle)",
        openapi_extra=BUNDLE_IN,
    )
    async def discharge_summary(request: Request, who: Caller) -> FhirResponse:
        refuse_unless_sender(who, "send clinical documents")
        raw = await read_body(request)
        try:
            body = json_body(raw, "Bundle")
            document = read_document(body)
            nhs = nhs_number_in(document.patient, document.patient_at)
            said = document_identifier(body, document.composition)
            at = at_time(document.composition["date"], datetime.now(UTC), "Bundle.entry[0].resource.date")
        except InvalidMessageError as error:
            await keep_refused(refused, raw, error, who.org)
            raise
        person = person_key(api_.key_secret, nhs, None)
        composition_id = stable_id("discharge-summary", who.org, *said, person)
        letter = composition_of(document, composition_id, person, nhs, who.org)
        held = api_.reader.read("Composition", composition_id)
        if held is not None and {k: v for k, v in held.items() if k != "meta"} == letter:
            return received_already(composition_id)
        resources = [letter, patient_stub(person, nhs, "hospital", who.org)]
        if document.encounter is not None:
            resources.append(encounter_of(document.encounter, letter["encounter"]["reference"], person, who.org))
        # the same document is the same event; sent again changed (a correction under its identifier) it is
        # news, which replaces the letter the record holds (its date no earlier: the record's own rule)
        sent = hashlib.sha256(orjson.dumps(resources, option=orjson.OPT_SORT_KEYS)).hexdigest()
        event_id = stable_id("discharge-summary-event", who.org, *said, person, sent)
        await emit(api_, DISCHARGE_SUMMARY_RECEIVED.type, who, person, at, *resources, event_id=event_id)
        location = f"/fhir/Composition/{composition_id}"
        return FhirResponse(letter, status_code=201 if held is None else 200, headers={"Location": location})

    return api


async def keep_refused(refused: Refused | None, raw: bytes, error: HubError, sender: str) -> None:
    """Hand a refused document to the dead-letter topic; Kafka not taking it is logged, not answered:
    the sender is told why their document was refused either way."""
    if refused is None:
        return
    with contextlib.suppress(InfrastructureError):
        await refused(raw, error, sender)
        return
    log.warning("a refused discharge summary from %s could not be kept on the dead-letter topic", sender)


@dataclass(frozen=True)
class Document:
    """The parts of a document Bundle the hub takes: its Composition, Patient (entry `patient_at`)
    and (if any) Encounter."""

    composition: Json
    patient: Json
    patient_at: int
    encounter: Json | None


def read_document(body: Json) -> Document:
    """The document's parts, each checked; an InvalidMessageError naming the element otherwise."""
    if body.get("resourceType") != "Bundle":
        raise InvalidMessageError("the body must be a FHIR Bundle (a document)", ("Bundle.resourceType",))
    refuse_unknown_types(body)
    validate(Bundle, body, "Bundle")
    if body.get("type") != "document":
        raise InvalidMessageError(
            f"Bundle.type {body.get('type')!r}: only a document Bundle (type document) is taken here",
            ("Bundle.type",),
            code="code-invalid",
        )
    entries = [e.get("resource") or {} for e in body.get("entry") or []]
    urls = [str(e.get("fullUrl") or "") for e in body.get("entry") or []]
    if not entries or entries[0].get("resourceType") != "Composition":
        raise InvalidMessageError("a document's first entry is its Composition", ("Bundle.entry[0].resource",))
    composition = entries[0]
    validate(Composition, composition, "Bundle.entry[0].resource")
    refuse_other_documents(composition)
    if composition.get("status") not in LETTER_STATUSES:  # (preliminary: not yet a letter; entered-in-error: none)
        raise InvalidMessageError(
            f"Composition.status {composition.get('status')!r}: a discharge summary is taken when it is "
            f"{' or '.join(sorted(LETTER_STATUSES))}",
            ("Bundle.entry[0].resource.status",),
            code="code-invalid",
        )
    if not composition.get("date"):
        raise InvalidMessageError("a Composition has a date", ("Bundle.entry[0].resource.date",), code="required")
    patients = [i for i, e in enumerate(entries) if e.get("resourceType") == "Patient"]
    if len(patients) > 1:  # (whose letter would it be: one document is about one person)
        raise InvalidMessageError(
            f"the document has {len(patients)} Patient entries: a discharge summary is about one person",
            (f"Bundle.entry[{patients[1]}].resource",),
        )
    if not patients:
        raise InvalidMessageError(
            "the document has no Patient entry (Composition.subject names the person the document is about)",
            ("Bundle.entry.resource.ofType(Patient)",),
            code="required",
        )
    patient_at = referenced(composition.get("subject"), entries, urls, "Patient")
    if patient_at is None:
        raise InvalidMessageError(
            "Composition.subject must name the document's Patient entry (by its fullUrl or Patient/id): the "
            "person the document is about",
            ("Bundle.entry[0].resource.subject",),
            code="required",
        )
    validate(Patient, entries[patient_at], f"Bundle.entry[{patient_at}].resource")
    encounter_at = referenced(composition.get("encounter"), entries, urls, "Encounter")
    encounter = entries[encounter_at] if encounter_at is not None else None
    if encounter is not None:
        where = f"Bundle.entry[{encounter_at}].resource"
        validate(Encounter, encounter, where)
        if encounter.get("status") not in ENCOUNTER_STATUSES:
            raise InvalidMessageError(
                f"Encounter.status {encounter.get('status')!r} is not an R4 encounter status",
                (f"{where}.status",),
                code="code-invalid",
            )
        about = encounter.get("subject")
        if about is not None and referenced(about, entries, urls, "Patient") != patient_at:
            raise InvalidMessageError(
                "Encounter.subject names someone other than the document's Patient", (f"{where}.subject",)
            )
    return Document(composition, entries[patient_at], patient_at, encounter)


LETTER_STATUSES = frozenset({"final", "amended"})
ENCOUNTER_STATUSES = frozenset(
    {"planned", "arrived", "triaged", "in-progress", "onleave", "finished", "cancelled", "entered-in-error", "unknown"}
)


def refuse_unknown_types(body: Json) -> None:
    """Refuse (400) an entry whose resourceType FHIR R4 does not have, naming it: STU3's ReferralRequest,
    say (fhir.resources raises KeyError on it, not a validation error), with a word on STU3 documents."""
    for index, entry in enumerate(body.get("entry") or []):
        kind = (entry.get("resource") or {}).get("resourceType") if isinstance(entry, dict) else None
        if not isinstance(kind, str):
            continue
        try:
            get_fhir_model_class(kind)
        except (ValueError, KeyError):
            raise InvalidMessageError(
                f"{kind[:40]!r} is not a FHIR R4 resource type{_stu3_hint(body)}",
                (f"Bundle.entry[{index}].resource.resourceType",),
                code="code-invalid",
            ) from None


def _stu3_hint(body: Json) -> str:
    profiles = [str(p) for p in (body.get("meta") or {}).get("profile") or []]
    stu3 = any("/STU3/" in p for p in profiles)
    return ": this looks like a FHIR STU3 document (ITK Transfer of Care); only FHIR R4 is taken here" if stu3 else ""


def refuse_other_documents(composition: Json) -> None:
    codings = (composition.get("type") or {}).get("coding") or []
    if not any(c.get("system") == SNOMED and c.get("code") == DISCHARGE_SUMMARY_SNOMED for c in codings):
        said = ", ".join(f"{c.get('system')}|{c.get('code')}" for c in codings) or "none"
        raise InvalidMessageError(
            f"Composition.type ({said}) is not a discharge summary ({SNOMED}|{DISCHARGE_SUMMARY_SNOMED}): "
            "only discharge summaries are taken here",
            ("Bundle.entry[0].resource.type",),
            code="code-invalid",
        )


def referenced(reference: object, entries: list[Json], urls: list[str], kind: str) -> int | None:
    """The index of the entry of `kind` the reference names (by fullUrl or kind/id); None where it names
    none of the entries. (Never the first of that kind instead: a letter filed under someone it does
    not name is a letter about the wrong person.)"""
    ref = str(reference.get("reference") or "") if isinstance(reference, dict) else ""
    for index, (entry, url) in enumerate(zip(entries, urls, strict=True)):
        named = ref and (ref == url or ref == f"{kind}/{entry.get('id')}" or url.endswith(f"/{ref}"))
        if entry.get("resourceType") == kind and named:
            return index
    return None


def nhs_number_in(patient: Json, at: int) -> str:
    where = f"Bundle.entry[{at}].resource.identifier"
    said = [i for i in patient.get("identifier") or [] if i.get("system") == nhs_number.NHS_NUMBER_SYSTEM]
    value = str(said[0].get("value") or "").replace(" ", "") if said else ""
    if not value:
        raise InvalidMessageError(
            f"the Patient must carry the person's NHS number (identifier system {nhs_number.NHS_NUMBER_SYSTEM})",
            (where,),
            code="required",
        )
    why = nhs_number.why_invalid(value)
    if why is not None:  # (it never echoes the number)
        raise InvalidMessageError(f"Patient.identifier: {why}", (where,))
    return value


def document_identifier(body: Json, composition: Json) -> tuple[str, str]:
    """The document's identity: Bundle.identifier (required of a document, FHIR bdl-9), else the
    Composition's identifier; each a system and a value."""
    for said in (body.get("identifier"), composition.get("identifier")):
        if isinstance(said, dict) and str(said.get("system") or "").strip() and str(said.get("value") or "").strip():
            return str(said["system"]).strip(), str(said["value"]).strip()
    raise InvalidMessageError(
        "a document has an identifier (Bundle.identifier with a system and a value): the hub takes the same "
        "document once, by it",
        ("Bundle.identifier",),
        code="required",
    )


def composition_of(document: Document, id_: str, person: str, nhs: str, sender: str) -> Json:
    """The Composition as the record holds it: about the person (by key), of its stay, kept by the sender.
    References to entries the hub does not carry keep their display only; section narratives stay."""
    letter = {k: v for k, v in document.composition.items() if k not in ("meta", "id")}
    letter["id"] = id_
    letter["subject"] = {
        "reference": f"Patient/{person}",
        "identifier": {"system": nhs_number.NHS_NUMBER_SYSTEM, "value": nhs},
    }
    letter["encounter"] = {"reference": f"Encounter/{stable_id('discharge-encounter', id_)}"}
    if document.encounter is None:
        letter.pop("encounter")
    letter["custodian"] = {"identifier": {"system": ODS_SYSTEM, "value": sender}}
    letter["author"] = [_display_only(a) for a in letter.get("author") or []] or [dict(letter["custodian"])]
    letter["section"] = [_section(s) for s in letter.get("section") or []]
    if not letter["section"]:
        letter.pop("section")
    return letter


def encounter_of(encounter: Json, reference: str, person: str, sender: str) -> Json:
    stay = {k: v for k, v in encounter.items() if k not in ("meta", "id", "contained")}
    stay["id"] = reference.removeprefix("Encounter/")
    stay["subject"] = {"reference": f"Patient/{person}"}
    stay["serviceProvider"] = {"identifier": {"system": ODS_SYSTEM, "value": sender}}
    for field in ("participant", "location"):
        stay.pop(field, None)  # (they name entries the hub does not carry)
    for field in ("episodeOfCare", "basedOn", "appointment", "partOf", "account", "reasonReference"):
        stay.pop(field, None)
    hospitalization = stay.get("hospitalization")
    if isinstance(hospitalization, dict):
        stay["hospitalization"] = {
            k: v for k, v in hospitalization.items() if k not in ("origin", "destination", "preAdmissionIdentifier")
        }
    return stay


def _display_only(reference: Any) -> Json:
    shown = reference.get("display") if isinstance(reference, dict) else None
    return {"display": str(shown or "an author named in the sending document")}


def _section(section: Json) -> Json:
    kept = {k: v for k, v in section.items() if k not in ("entry", "focus", "author", "section")}
    if section.get("section"):
        kept["section"] = [_section(s) for s in section["section"]]
    if section.get("entry") and "text" not in kept:
        kept["emptyReason"] = {"text": "entries not carried by the hub: see the sending organisation's record"}
    return kept


def validate(model: Any, resource: Json, where: str) -> None:
    """Refuse what is not valid FHIR R4 (fhir.resources R4B), naming the first element at fault as a
    FHIRPath (`Bundle.entry[0].resource.status`)."""
    try:
        model.model_validate(resource)
    except ValidationError as exc:
        first = exc.errors()[0]
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"])
        raise InvalidMessageError(f"not valid FHIR R4: {where}{path}: {first['msg']}", (f"{where}{path}",)) from exc


def received_already(composition_id: str) -> FhirResponse:
    """As FHIR's conditional create answers a match: 200, nothing made or sent again."""
    issue = {
        "severity": "information",
        "code": "duplicate",
        "diagnostics": f"this document was received already (Composition/{composition_id}): not sent again",
        "expression": ["Bundle.identifier"],
    }
    headers = {"Location": f"/fhir/Composition/{composition_id}"}
    return FhirResponse({"resourceType": "OperationOutcome", "issue": [issue]}, headers=headers)
