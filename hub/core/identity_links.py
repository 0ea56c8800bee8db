"""Identity links: a Patient known by a hospital number alone (an ED registration, keyed by it) and the
same person's Patient with a verified NHS number naming that number, found by the record and published
as a merge (PATIENT_MERGED), which the record, the rules engine and the KPIs follow as an A40.

The rule, checked for each Patient an event carries once the record has applied it, in either order:
    verified    the NHS-numbered Patient's number is verified (status 01, HL7 v2 PID-32 NSTS01); an
                unverified number, or one with no status, links no one
    local       the hospital number (system https://fhir.nhs.uk/Id/MRN/<assigning authority>, as
                adapters/hl7v2 maps PID-3) keys the other Patient, which has no NHS number at all, and
                is not merged away already; the key holds the authority, so another hospital's same
                number is another person
    one holder  the number is held with a verified NHS number by one person alone (a number two people's
                Patients claim links neither: never two NHS numbers into one)
The merge retires the hospital-number key into the NHS-numbered Patient's: its Bundle holds only the
retired Patient (inactive, replaced-by), as an A40's does beside the survivor's, whose Patient it leaves
as it is. Its id is that of the pair, its time the later of the two Patients' and its sender the one
that filed the retired Patient, so found in either order, or twice, it is the same event.

Pure: the record's unit of work and the hub's key secret in, events out; it writes nothing, so a replay
(which applies the published merge from the log, and never calls this) keeps the same record.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from hub.core.fhir_read import bundle_resources, of_kind
from hub.core.identity import person_key, stable_id
from hub.core.ports import Json, RecordEvent, RecordUnitOfWork, StoredResource
from hub.core.record_content import MERGED, NHS_NUMBER_SYSTEM, VERIFICATION_URL, replaced_by
from hub.core.record_merges import survivor
from schemas.events.coordination import NOT_RECORDED

MRN_SYSTEM = "https://fhir.nhs.uk/Id/MRN/"  # + the assigning authority (adapters/hl7v2 PID-3)
VERIFIED = "01"  # Number present and verified (HL7 v2 PID-32 NSTS01)
# (the UK Core England code system, and STU3 CareConnect's, accepted on input: ../shared/STANDARDS.md)
VERIFICATION_SYSTEMS = frozenset(
    {
        "https://fhir.hl7.org.uk/CodeSystem/UKCore-NHSNumberVerificationStatusEngland",
        "https://fhir.hl7.org.uk/STU3/CodeSystem/CareConnect-NHSNumberVerificationStatus-1",
    }
)


def identity_links(uow: RecordUnitOfWork, secret: bytes, events: Sequence[RecordEvent]) -> list[RecordEvent]:
    """The merges the Patients of `events` (applied in `uow`) show: each hospital-number key to be
    retired into the same person's verified NHS-numbered Patient, once each, in the order found."""
    found: dict[str, RecordEvent] = {}
    asked: set[str] = set()
    for event in events:
        if event.type in NOT_RECORDED:
            continue
        for patient in of_kind(bundle_resources(event.payload), "Patient"):
            pid = str(patient.get("id") or "")
            if not pid or pid in asked:
                continue
            asked.add(pid)
            held = uow.get("Patient", pid)
            for link in _links(uow, secret, held) if held is not None else ():
                found.setdefault(link.id, link)
    return list(found.values())


def verified_nhs_number(patient: Json) -> str | None:
    """The Patient's NHS number when its verification status says it is verified (01), else None."""
    for identifier in _nhs_identifiers(patient):
        for ext in identifier.get("extension") or []:
            if not isinstance(ext, dict) or ext.get("url") != VERIFICATION_URL:
                continue
            if any(_verified(c) for c in (ext.get("valueCodeableConcept") or {}).get("coding") or []):
                return str(identifier["value"])
    return None


def _verified(coding: object) -> bool:
    return isinstance(coding, dict) and coding.get("system") in VERIFICATION_SYSTEMS and coding.get("code") == VERIFIED


def _links(uow: RecordUnitOfWork, secret: bytes, held: StoredResource) -> Iterator[RecordEvent]:
    if replaced_by(held.content) is not None:
        return  # merged away: its survivor speaks for the person
    if verified_nhs_number(held.content) is not None:  # the NHS-numbered Patient: its numbers' Patients
        for system, value in _hospital_numbers(held.content):
            key = person_key(secret, None, (system.removeprefix(MRN_SYSTEM), value))
            other = uow.get("Patient", key) if key != held.id else None
            if other is not None and _linkable(other) and _holder(uow, system, value) == held.id:
                yield _merge(other, held)
    elif not _nhs_identifiers(held.content):  # a hospital number alone: a verified holder of it
        for system, value in _hospital_numbers(held.content):
            into = _holder(uow, system, value)
            target = uow.get("Patient", into) if into is not None and into != held.id else None
            if target is not None:
                yield _merge(held, target)


def _linkable(patient: StoredResource) -> bool:
    """A Patient known by a hospital number alone, not merged away."""
    return replaced_by(patient.content) is None and not _nhs_identifiers(patient.content)


def _holder(uow: RecordUnitOfWork, system: str, value: str) -> str | None:
    """The one person (as the record now knows them, merges followed) whose Patients hold this hospital
    number with a verified NHS number; None when no one's do, or more than one person's."""
    holders = {
        survivor(uow, p.id)
        for p in uow.find_by_identifier("Patient", system, value)
        if verified_nhs_number(p.content) is not None
    }
    return holders.pop() if len(holders) == 1 else None


def _merge(retired: StoredResource, into: StoredResource) -> RecordEvent:
    """The merge retiring `retired` into `into`: an A40's retired Patient alone, sent as its sender."""
    patient: Json = {
        "resourceType": "Patient",
        "id": retired.id,
        "active": False,
        "identifier": retired.content.get("identifier") or [],
        "link": [{"other": {"reference": f"Patient/{into.id}"}, "type": "replaced-by"}],
    }
    at = max(retired.event_time, into.event_time)
    bundle: Json = {"resourceType": "Bundle", "type": "collection", "timestamp": at.isoformat()}
    bundle["entry"] = [{"resource": patient}]
    source = str((retired.content.get("meta") or {}).get("source") or "")  # (stamped on every write)
    return RecordEvent(stable_id("identity-link", retired.id, into.id), MERGED, source, at, into.id, bundle)


def _nhs_identifiers(patient: Json) -> list[Json]:
    identifiers = patient.get("identifier")
    return [
        i
        for i in (identifiers if isinstance(identifiers, list) else [])
        if isinstance(i, dict) and i.get("system") == NHS_NUMBER_SYSTEM and isinstance(i.get("value"), str)
    ]


def _hospital_numbers(patient: Json) -> list[tuple[str, str]]:
    identifiers = patient.get("identifier")
    return [
        (str(i["system"]), str(i["value"]))
        for i in (identifiers if isinstance(identifiers, list) else [])
        if isinstance(i, dict)
        and str(i.get("system", "")).startswith(MRN_SYSTEM)
        and isinstance(i.get("value"), str)
        and i["value"]
    ]
