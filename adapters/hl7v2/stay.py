"""HL7 v2 PV1 -> the FHIR Encounter of a hospital stay or attendance (adapters.hl7v2.to_fhir maps the rest
of an ADT): its identity (PV1-19, else PV1-44), status from the trigger event (an A04's from PV1-2 too),
class (PV1-2), period (PV1-44/45, neither in the future nor the discharge before the admission), ward
(PV1-3), and where the patient went (PV1-36 and PV1-37), after the HL7 v2-to-FHIR IG's PV1 map and UK Core."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from adapters.hl7v2 import fields as dt
from adapters.hl7v2.message import Fields
from hub.core.errors import InvalidMessageError
from hub.core.identity import stable_id
from hub.core.record_content import DISCHARGE_METHOD_URL

Json = dict[str, Any]
ODS_SYSTEM, MRN_SYSTEM = dt.ODS_SYSTEM, dt.MRN_SYSTEM
DISCHARGE_DESTINATION = "https://fhir.hl7.org.uk/CodeSystem/UKCore-DischargeDestinationEngland"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
PATIENT_CLASS = "http://terminology.hl7.org/CodeSystem/v2-0004"
_DESTINATIONS = {
    "19",
    "29",
    "30",
    "37",
    "38",
    *map(str, range(48, 55)),
    "65",
    "66",
    "79",
    "84",
    "85",
    "87",
    "88",
    "98",
    "99",
}

STATUS = {"A01": "in-progress", "A02": "in-progress", "A03": "finished", "A08": "unknown"}
STATUS |= {"A11": "cancelled", "A12": "in-progress", "A13": "in-progress"}  # (A12: back on the ward of PV1-3)
# An A04 registers an attendance (ED, outpatient clinic) that is going on as it is sent: in-progress, unless
# PV1-2 says more (the v2-to-FHIR IG's PatientClass[EncounterStatus] map, used where PV1-45 is empty; its
# event map's `planned` for an A04 is for a booking, which UK feeds send as an A05 or an SIU)
REGISTERED = {"P": "planned", "U": "unknown"}
CLASS = {"E": (ACT_CODE, "EMER"), "I": (ACT_CODE, "IMP"), "O": (ACT_CODE, "AMB"), "P": (ACT_CODE, "PRENC")}


def encounter(
    f: Fields, pv1: Any, trigger: str, sender: str, message_key: str, key: str, latest: datetime | None
) -> Json:
    visit, admit_text = f.get(pv1, 19), f.get(pv1, 44)
    if visit:
        enc_id = stable_id("hl7v2", sender, "visit", visit)
    elif admit_text:
        enc_id = stable_id("hl7v2", sender, "admit", key, admit_text)
    else:  # nothing names the stay: it is this message's own (never another's under a reused control ID)
        enc_id = stable_id("hl7v2", sender, message_key)
    admitted, discharged = _stay(f, pv1, latest, ends=trigger != "A13")
    status = "finished" if discharged and trigger in ("A03", "A04", "A08") else _status(trigger, f.get(pv1, 2))
    # PV1-2 empty: class U (Encounter.class is 1..1), which never replaces a class the record holds
    system, code = CLASS.get(f.get(pv1, 2).upper(), (PATIENT_CLASS, f.get(pv1, 2).upper() or "U"))
    resource: Json = {
        "resourceType": "Encounter",
        "id": enc_id,
        "status": status,
        "class": {"system": system, "code": code},
        "subject": {"reference": f"Patient/{key}"},
        "serviceProvider": {"identifier": {"system": ODS_SYSTEM, "value": sender}},
    }
    if visit:
        vn = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "VN"}]}
        resource["identifier"] = [{"type": vn, "system": MRN_SYSTEM + "visit/" + sender, "value": visit}]
    period = {k: dt.fhir_datetime(v) for k, v in (("start", admitted), ("end", discharged)) if v}
    if period and trigger != "A13":
        resource["period"] = period
    elif admitted:
        resource["period"] = {"start": dt.fhir_datetime(admitted)}
    if ward := " ".join(p for p in (f.reps(pv1, 3) or [[]])[0][:3] if p):
        resource["location"] = [{"location": {"display": ward}}]
    _discharge(f, pv1, resource)
    return resource


def _status(trigger: str, patient_class: str) -> str:
    if trigger == "A04":
        return REGISTERED.get(patient_class.upper(), "in-progress")
    return STATUS[trigger]


def _discharge(f: Fields, pv1: Any, resource: Json) -> None:
    """Where the patient went. PV1-37 (ITK table 0113: the NHS Data Dictionary's Discharge Destination)
    is the disposition when it is one of those codes, or PV1-36 is empty; PV1-36, whose table differs by
    feed (ITK's 0112 mixes A&E disposal with Discharge Method; ITK and Epic send a destination such as
    19 there, Epic free text), is then kept as sent, text only, in UK Core's discharge method extension.
    Otherwise PV1-36 is the disposition (the v2-to-FHIR IG's map) and a PV1-37 beside it, no destination
    code (Epic's `1`), the IG's hospitalization.destination, by name. Never coded by guess, never refused."""
    # (PV1-37 is a DLD: the location, then its effective date, which is no name for it)
    to, disposal = _disposition([r[:1] for r in f.reps(pv1, 37)]), _disposition(f.reps(pv1, 36))
    stay: Json = {}
    if to is not None and ("coding" in to or disposal is None):
        stay["dischargeDisposition"] = to
        if disposal is not None:
            method = {"url": DISCHARGE_METHOD_URL, "valueCodeableConcept": {"text": disposal["text"]}}
            resource["extension"] = [method]
    elif disposal is not None:
        stay["dischargeDisposition"] = disposal
        if to is not None:
            stay["destination"] = {"display": to["text"]}
    if stay:
        resource["hospitalization"] = stay


def _stay(f: Fields, pv1: Any, latest: datetime | None, *, ends: bool) -> tuple[datetime | None, datetime | None]:
    """PV1-44 and PV1-45; neither may be in the future, nor the discharge before the admission.
    An A13 (`ends` False) cancels the discharge: its PV1-45 must be a time stamp but is not used, so
    it is held to neither rule (Epic's A13s carry one a little before the admission time)."""
    admit_text, discharge_text = f.get(pv1, 44), f.get(pv1, 45)
    admitted, discharged = dt.timestamp(admit_text, "PV1-44"), dt.timestamp(discharge_text, "PV1-45")
    if not ends:
        discharged = None
    dt.not_future(admitted, latest, "PV1-44")
    dt.not_future(discharged, latest, "PV1-45")
    if admitted and discharged and dt.period_end(discharged, discharge_text) <= admitted:
        raise InvalidMessageError(
            f"PV1-45 (discharge time) {discharge_text} is before PV1-44 (admission time) {admit_text}",
            ("PV1-45",),
            code="value",
        )
    return admitted, discharged


def _disposition(reps: list[list[str]]) -> Json | None:
    if not reps or not reps[0][0]:
        return None
    code = reps[0][0]
    text = reps[0][1] if len(reps[0]) > 1 and reps[0][1] else code
    if code in _DESTINATIONS:
        return {"coding": [{"system": DISCHARGE_DESTINATION, "code": code}], "text": text}
    return {"text": text}
