"""Register rows and referrals -> FHIR R4 events, shaped as schemas/events/coordination.py says.

Pure: one row in, one validated event out, or InvalidMessageError naming the row and the field.
Each resource is validated once here with the fhir.resources R4B models. Event ids are stable ids
of the source, the file-level natural key (practice and extraction date; referrer and referral)
and the row's content, so the same file ingested twice is applied once, and a corrected row is a
new event. Ids are built from the person key, never the NHS number.

A Care Act assessment outcome given with an adult social care referral travels in the same
REFERRAL_RECEIVED Bundle as an Observation (one row, one event), which the ServiceRequest cites in
`supportingInfo`. The event time of a date is the start of that day in the UK (midnight, GMT or BST).
A referral's ServiceRequest carries the birth date its referrer gave (extension BIRTH_DATE_SAID). The
person's name, address, phone and carer, the referring worker and the case reference are person_details.py's
(a malformed phone, postcode or email left out, and named in the event's `warnings`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import orjson
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.servicerequest import ServiceRequest
from pydantic import ValidationError

from adapters.referrals.fields import RowFields, When
from adapters.referrals.person_details import PersonDetails, on_patient, on_request, read_details
from adapters.referrals.rows import Format, Row, not_read
from hub.core.errors import InvalidMessageError
from hub.core.identity import person_key, stable_id
from hub.core.nhs_number import NHS_NUMBER_SYSTEM
from schemas.events import coordination as co
from schemas.events.base import EventType

Json = dict[str, Any]
ODS_SYSTEM = "https://fhir.nhs.uk/Id/ods-organization-code"
# Not (yet) in the contract; see the report on schemas/events/coordination.py.
LOCAL_AUTHORITY_SYSTEM = "https://carehub.invalid/Id/local-authority"
REFERRAL_ID_SYSTEM = "https://carehub.invalid/Id/referral"
# the birth date the referrer gave with the referral, on its ServiceRequest: the Patient stub is only
# kept while the record knows nothing better, the referral as its referrer last sent it
# (adapters/referrals/clashes.py compares a correction with it)
BIRTH_DATE_SAID = "https://carehub.invalid/StructureDefinition/referrer-birth-date"
CARE_ACT_SYSTEM = "https://carehub.invalid/CodeSystem/care-act-assessment"
CARE_ACT_OUTCOMES = {
    "eligible": "Eligible needs (Care Act 2014 s.13)",
    "not-eligible": "No eligible needs",
    "declined": "Assessment declined",
    "pending": "Assessment not yet complete",
}
FRAILTY_LEVELS = ("none", "mild", "moderate", "severe")
NEEDS = {  # acceptance criterion (b) of the Croydon PIC service specification
    "social-isolation": "Social isolation",
    "emotional-needs": "Emotional needs",
    "financial-support": "Financial support",
    "self-management": "Improving ability to self-manage",
    "managing-at-home": "Improving ability to manage at home",
    "carer-support": "Carer support",
}
MEASURES = {
    "non-elective-admissions-12m": "Non-elective hospital admissions in the last 12 months",
    "long-term-conditions": "Long-term conditions",
    "frailty": "Frailty (electronic Frailty Index category)",
}
# withdrawn: the referrer terminated its request before the service completed it (FHIR R4 request-status
# revoked), whatever its reason, sent in error among them: entered-in-error would take the referral out
# of the record and the KPIs as though never made, which a referral acted on (triaged, accepted) was not
STATUS_OF_OUTCOME = {"declined": "revoked", "attended": "completed", co.WITHDRAWN: "revoked"}
ASC_OUTCOMES = (co.WITHDRAWN,)  # a council says of its own referral only that it withdraws it
MAX_REFERRAL_ID = 64


@dataclass(frozen=True)
class MappedEvent:
    """One FHIR event from one row."""

    event_type: str
    event_id: str
    sender: str
    event_time: datetime
    person_key: str
    payload: Json
    # what the row's outcome warns of: details left out, each naming row and field (person_details.py);
    # not part of the event, whose id and payload are the row's without them
    warnings: tuple[str, ...] = field(default=(), compare=False)

    @property
    def source(self) -> str:
        return f"urn:ods:{self.sender}"


@dataclass(frozen=True)
class _Referral:
    source: str
    key: str
    nhs: str
    born: When | None
    practice: str
    referred: When
    referrer: str
    referrer_system: str
    referrer_name: str
    addressed_to: str
    reasons: list[str]
    referral_id: str | None
    assessment: str | None = None
    details: PersonDetails = field(default_factory=PersonDetails)


def map_row(
    fmt: Format, row: Row, *, key_secret: bytes, now: datetime, extracted_on: date | None = None
) -> MappedEvent:
    """One row as one event; InvalidMessageError naming the row and field if it cannot be (a register
    row, referral or outcome dated later than `now`, the time the file is read, among them)."""
    if row.problem is not None:
        raise row.problem
    values = row.values
    if extracted_on is not None and fmt is Format.REGISTER and not str(values.get("extracted_on") or "").strip():
        values = {**values, "extracted_on": extracted_on.isoformat()}
    f = RowFields(row.number, values, misspelt=lambda name: not_read(name, values, fmt))
    if fmt is Format.REGISTER:
        return _register_row(f, key_secret, now)
    if fmt.is_outcome:
        return _outcome(f, key_secret, now, council=fmt is not Format.VCSE_OUTCOME)
    if fmt is Format.VCSE_JSON:
        return _referral_event(f, _vcse_referral(f, key_secret, now))
    return _referral_event(f, _asc_referral(f, key_secret, now))


def _register_row(f: RowFields, secret: bytes, now: datetime) -> MappedEvent:
    nhs = f.nhs_number()
    practice = f.ods("practice_ods", practice=True) or ""
    admissions = f.count("non_elective_admissions_12m")
    conditions = f.count("long_term_conditions")
    frailty = f.choice("frailty", FRAILTY_LEVELS) or ""
    born = f.optional_day("birth_date")
    if not f.text("extracted_on", required=False):
        raise f.fail(
            "extracted_on", "is required (add the column, or give the extraction date for the file)", "required"
        )
    extracted = f.not_future("extracted_on", f.day("extracted_on"), now)
    _not_after(f, born, extracted, "birth_date", "extracted_on")
    key = person_key(secret, nhs, None)
    values: list[tuple[str, Json]] = [
        ("non-elective-admissions-12m", {"valueInteger": admissions}),
        ("long-term-conditions", {"valueInteger": conditions}),
        ("frailty", {"valueCodeableConcept": _frailty(frailty)}),
    ]
    observations = [
        _observation(stable_id("register", practice, extracted.fhir, key, measure), key, measure, value)
        | {"effectiveDateTime": extracted.fhir, "performer": [_org(ODS_SYSTEM, practice)]}
        for measure, value in values
    ]
    content = (str(admissions), str(conditions), frailty, born.fhir if born else "")
    event_id = stable_id("register-row", practice, extracted.fhir, key, *content)
    resources = [_patient_stub(key, nhs, born, practice), *observations]
    return _event(f, co.REGISTER_ROW, event_id, practice, extracted.utc, key, resources)


def _frailty(level: str) -> Json:
    if level not in co.FRAILTY:
        return {"text": level}  # "none": the contract has no code for fit / no frailty
    display = f"{level.capitalize()} frailty"
    return {"coding": [{"system": co.SNOMED, "code": co.FRAILTY[level], "display": display}], "text": level}


def _observation(oid: str, key: str, measure: str, value: Json) -> Json:
    coding = {"system": co.MEASURE_SYSTEM, "code": measure, "display": MEASURES.get(measure, measure)}
    resource: Json = {"resourceType": "Observation", "id": oid, "status": "final", "code": {"coding": [coding]}}
    return resource | {"subject": {"reference": f"Patient/{key}"}} | value


def _asc_referral(f: RowFields, secret: bytes, now: datetime) -> _Referral:
    nhs = f.nhs_number()
    born = f.optional_day("birth_date")
    practice = f.ods("gp_practice_ods", practice=True) or ""
    referred = f.not_future("referred_on", f.when("referred_on"), now)
    referrer = f.local_authority("referrer")
    addressed_to = f.ods("addressed_to") or ""
    reason = f.text("reason") or ""
    referral_id = _referral_ref(f, required=False)
    name = f.text("referrer_name", required=False) or "Adult social care"
    assessment = f.choice("care_act_assessment_outcome", tuple(CARE_ACT_OUTCOMES), required=False)
    _not_after(f, born, referred, "birth_date", "referred_on")
    details = read_details(f)
    key = person_key(secret, nhs, None)
    return _Referral(
        "adult-social-care", key, nhs, born, practice, referred, referrer, LOCAL_AUTHORITY_SYSTEM, name,
        addressed_to, [reason], referral_id, assessment, details,
    )  # fmt: skip


def _vcse_referral(f: RowFields, secret: bytes, now: datetime) -> _Referral:
    referral_id = _referral_ref(f, required=True)
    nhs = f.nhs_number()
    born = f.optional_day("birth_date")
    practice = f.ods("gp_practice_ods", practice=True) or ""
    referred = f.not_future("referred_on", f.when("referred_on"), now)
    referrer = f.ods("referrer") or ""
    addressed_to = f.ods("addressed_to") or ""
    needs = [NEEDS[n] for n in f.choices("needs", tuple(NEEDS))]
    reason = f.text("reason", required=False)
    if not needs and not reason:
        said = "is absent" if f.absent("needs") else "names none"
        raise f.fail("reason", f"is required when needs {said}: give needs, a reason or both", "required")
    name = f.text("referrer_name", required=False) or "Voluntary sector organisation"
    _not_after(f, born, referred, "birth_date", "referred_on")
    details = read_details(f)
    key = person_key(secret, nhs, None)
    reasons = [*needs, *([reason] if reason else [])]
    return _Referral(
        "voluntary-sector", key, nhs, born, practice, referred, referrer, ODS_SYSTEM, name, addressed_to,
        reasons, referral_id, details=details,
    )  # fmt: skip


def _referral_ref(f: RowFields, *, required: bool) -> str | None:
    ref = f.text("referral_id", required=required)
    if ref is not None and len(ref) > MAX_REFERRAL_ID:
        raise f.fail("referral_id", f"is longer than {MAX_REFERRAL_ID} characters")
    return ref


def _request_id(source: str, referrer: str, referral_id: str | None, *natural: str) -> str:
    if referral_id:
        return stable_id("referral", source, referrer, referral_id)
    return stable_id("referral", source, referrer, *natural)


def _referral_event(f: RowFields, r: _Referral) -> MappedEvent:
    natural = (r.key, r.referred.fhir, r.addressed_to)
    rid = _request_id(r.source, r.referrer, r.referral_id, *natural)
    request = _service_request(rid, r.source, r.key, r.nhs, r.referrer, r.referrer_system, r.referral_id)
    request |= {"authoredOn": r.referred.fhir, "performer": [_org(ODS_SYSTEM, r.addressed_to)]}
    request["requester"]["display"] = r.referrer_name
    request["reasonCode"] = [{"text": reason} for reason in r.reasons]
    if r.born:
        request["extension"].append({"url": BIRTH_DATE_SAID, "valueDate": r.born.fhir})
    on_request(request, r.details, r.referrer_system, r.referrer)
    resources = [request, on_patient(_patient_stub(r.key, r.nhs, r.born, r.practice), r.details)]
    if r.assessment:
        oid = stable_id("care-act-assessment", rid)
        coding = {"system": CARE_ACT_SYSTEM, "code": r.assessment, "display": CARE_ACT_OUTCOMES[r.assessment]}
        assessed: Json = {
            "resourceType": "Observation",
            "id": oid,
            "status": "final",
            "code": {"coding": [{"system": CARE_ACT_SYSTEM, "code": "outcome"}], "text": "Care Act assessment"},
            "subject": {"reference": f"Patient/{r.key}"},
            "effectiveDateTime": r.referred.fhir,
            "performer": [_org(r.referrer_system, r.referrer)],
            "valueCodeableConcept": {"coding": [coding]},
        }
        request["supportingInfo"] = [{"reference": f"Observation/{oid}"}]
        resources.append(assessed)
    said = [r.key, r.born.fhir if r.born else "", r.practice, r.referrer_name, r.assessment or "", r.reasons]
    said += r.details.said()  # (nothing when the row gives none: its id is the one it had before)
    content = orjson.dumps([r.referred.fhir, r.addressed_to, *said]).decode()  # free text may hold "|"
    event_id = stable_id("referral-received", rid, content)
    warnings = r.details.warnings
    return _event(f, co.REFERRAL_RECEIVED, event_id, r.referrer, r.referred.utc, r.key, resources, warnings)


def _outcome(f: RowFields, secret: bytes, now: datetime, *, council: bool = False) -> MappedEvent:
    """An outcome of the referral its referrer sent with `referral_id`: a voluntary organisation's
    (ODS referrer, any of co.OUTCOMES), or a council's withdrawal of its own (local-authority referrer)."""
    referral_id = _referral_ref(f, required=True) or ""
    referrer = (f.local_authority("referrer") if council else f.ods("referrer")) or ""
    nhs = f.nhs_number()
    outcome = _council_outcome(f) if council else f.choice("outcome", co.OUTCOMES) or ""
    on = f.not_future("on", f.when("on"), now)
    reason = f.text("reason", required=False)
    key = person_key(secret, nhs, None)
    source, system = ("adult-social-care", LOCAL_AUTHORITY_SYSTEM) if council else ("voluntary-sector", ODS_SYSTEM)
    rid = _request_id(source, referrer, referral_id)
    request = _service_request(rid, source, key, nhs, referrer, system, referral_id)
    request["status"] = STATUS_OF_OUTCOME.get(outcome, "active")
    request["extension"].append({"url": co.OUTCOME_EXTENSION, "valueCode": outcome})
    if reason:
        request["note"] = [{"text": reason}]
    # the person too: the row sent again with its NHS number corrected is news, not a duplicate; a
    # withdrawal's reason too (a second reason stands over the first), and no other outcome's: their ids
    # stay as they were before a reason was read, so an older file sent again is the duplicate it was
    said = [reason] if reason and outcome == co.WITHDRAWN else []
    event_id = stable_id("referral-outcome", rid, outcome, on.fhir, key, *said)
    return _event(f, co.REFERRAL_OUTCOME, event_id, referrer, on.utc, key, [request])


def _council_outcome(f: RowFields) -> str:
    said = f.text("outcome") or ""
    if said.lower() not in ASC_OUTCOMES:
        raise f.fail(
            "outcome",
            f"{said[:40]!r} is not {' or '.join(ASC_OUTCOMES)}: a council says of the referral it sent that it "
            "withdraws it; contacted, attended, declined and accepted are for the service it was sent to to say",
        )
    return said.lower()


def _service_request(
    rid: str, source: str, key: str, nhs: str, referrer: str, referrer_system: str, referral_id: str | None
) -> Json:
    category = {"coding": [{"system": co.SNOMED, "code": co.PATIENT_REFERRAL, "display": "Patient referral"}]}
    origin = {"coding": [{"system": co.REFERRAL_SOURCE_SYSTEM, "code": source}]}
    request: Json = {
        "resourceType": "ServiceRequest",
        "id": rid,
        "extension": [{"url": co.SOURCE_EXTENSION, "valueCodeableConcept": origin}],
        "status": "active",
        "intent": "order",
        "category": [category],
        "subject": {"reference": f"Patient/{key}", "identifier": {"system": NHS_NUMBER_SYSTEM, "value": nhs}},
        "requester": _org(referrer_system, referrer),
    }
    if referral_id:
        request["identifier"] = [{"system": f"{REFERRAL_ID_SYSTEM}/{referrer}", "value": referral_id}]
    return request


def _patient_stub(key: str, nhs: str, born: When | None, practice: str) -> Json:
    patient: Json = {"resourceType": "Patient", "id": key, "identifier": [{"system": NHS_NUMBER_SYSTEM, "value": nhs}]}
    if born:
        patient["birthDate"] = born.fhir
    patient["generalPractitioner"] = [_org(ODS_SYSTEM, practice)]
    return patient


def _org(system: str, code: str) -> Json:
    return {"identifier": {"system": system, "value": code}}


def _not_after(f: RowFields, earlier: When | None, later: When, name: str, other: str) -> None:
    if earlier is not None and earlier.day > later.day:
        raise f.fail(name, f"is after {other}")


_MODELS: dict[str, Any] = {"Patient": Patient, "Observation": Observation, "ServiceRequest": ServiceRequest}


def _event(
    f: RowFields,
    kind: EventType,
    event_id: str,
    sender: str,
    when: datetime,
    key: str,
    resources: list[Json],
    warnings: tuple[str, ...] = (),
) -> MappedEvent:
    for resource in resources:
        _validate(f, resource)
    bundle: Json = {"resourceType": "Bundle", "type": "collection", "timestamp": when.isoformat()}
    bundle["entry"] = [{"resource": r} for r in resources]
    return MappedEvent(kind.type, event_id, sender, when, key, bundle, warnings)


def _validate(f: RowFields, resource: Json) -> None:
    try:
        _MODELS[resource["resourceType"]].model_validate(resource)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidMessageError(
            f"row {f.number}: {resource['resourceType']} would not be valid FHIR: {where}: {first['msg']}",
            (f"row {f.number}", resource["resourceType"]),
        ) from exc
