"""HL7 v2 ADT -> FHIR R4 events (UK Core identifiers), after the HL7 v2-to-FHIR IG's segment maps.

Pure: bytes in, validated FHIR JSON out. Each resource is validated once here, at the edge where
it enters, with the fhir.resources R4B models; the plain dicts travel on, never re-validated.

An event's id comes from the sender (MSH-4), the control ID (MSH-10) and the message's content
(message.fingerprint): a resend of the same message is the same event, which the record applies once,
and a different message under a control ID used before (a sender that restarts its counter) is a new
event, applied, never taken for a resend.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fhir.resources.R4B.encounter import Encounter
from fhir.resources.R4B.organization import Organization
from fhir.resources.R4B.patient import Patient
from pydantic import ValidationError

from adapters.hl7v2 import fields as dt
from adapters.hl7v2.identifiers import Person, person_in
from adapters.hl7v2.message import Fields, fingerprint, parse
from adapters.hl7v2.stay import encounter
from hub.core import nhs_number
from hub.core.errors import InvalidMessageError, UnsupportedMessageError
from hub.core.identity import stable_id
from hub.core.record_content import (
    REMOVED_URL,
    VERIFICATION_REMOVED,
    VERIFICATION_URL,
)
from hub.core.skew import CLOCK_SKEW
from schemas.events import encounter as enc
from schemas.events import patient as pat

Json = dict[str, Any]
NHS_SYSTEM = nhs_number.NHS_NUMBER_SYSTEM
ODS_SYSTEM = dt.ODS_SYSTEM
MRN_SYSTEM = dt.MRN_SYSTEM
VERIFICATION_SYSTEM = "https://fhir.hl7.org.uk/CodeSystem/UKCore-NHSNumberVerificationStatusEngland"
# An A04 (register a patient: ITK's ED and outpatient registration) is an encounter the person attends, its
# class from PV1-2: encounter.admitted's consumers take it rightly as it is (README, "A04, register a patient")
TRIGGERS = {
    "A01": enc.ENCOUNTER_ADMITTED,
    "A02": enc.ENCOUNTER_TRANSFERRED,
    "A03": enc.ENCOUNTER_DISCHARGED,
    "A04": enc.ENCOUNTER_ADMITTED,
    "A08": pat.PATIENT_UPDATED,
    "A11": enc.ADMISSION_CANCELLED,
    "A12": enc.TRANSFER_CANCELLED,
    "A13": enc.DISCHARGE_CANCELLED,
    "A28": pat.PATIENT_UPDATED,
    "A31": pat.PATIENT_UPDATED,
    "A40": pat.PATIENT_MERGED,
}
GENDER = {"M": "male", "F": "female", "U": "unknown", "O": "other", "A": "other", "N": "unknown"}
GENDER |= {"1": "male", "2": "female", "9": "other", "0": "unknown"}  # NHS Data Dictionary codes
VERIFICATION = {
    "01": "Number present and verified",
    "02": "Number present but not traced",
    "03": "Trace required",
    "04": "Trace attempted - No match or multiple match found",
    "05": "Trace needs to be resolved - (NHS number or patient detail conflict)",
    "06": "Trace in progress",
    "07": "Number not present and trace not required",
    "08": "Trace postponed (baby under six weeks old)",
}


@dataclass(frozen=True)
class MappedEvent:
    """One FHIR event from one HL7 message (an A40 may give several)."""

    event_type: str
    control_id: str
    sender: str
    source: str
    event_id: str
    event_time: datetime
    person_key: str
    payload: Json


def map_message(raw: bytes, *, key_secret: bytes, now: datetime | None = None) -> list[MappedEvent]:
    """Parse, map and validate one ADT message; raises InvalidMessageError naming the field.

    `now` is the hub's clock: a time the message gives (EVN-2 or MSH-7, PV1-44, PV1-45, PID-7, PID-29) later
    than it by more than CLOCK_SKEW is refused. Without `now` (recorded traffic, tests) no time is held to a clock.
    """
    f = Fields(parse(raw))
    msh = f.first("MSH")
    trigger = _trigger(f, msh)
    sender = f.get(msh, 4) or f.get(msh, 3)
    if not sender:
        raise InvalidMessageError("MSH-4 (sending facility) is required", ("MSH-4",), code="required")
    control_id = f.get(msh, 10)
    if not control_id:
        raise InvalidMessageError("MSH-10 (message control ID) is required", ("MSH-10",), code="required")
    latest = now + CLOCK_SKEW if now else None
    when = _event_time(f, msh, latest)
    message_key = f"{control_id}|{fingerprint(raw)}"  # see the module docstring
    if trigger == "A40":
        return _merges(f, key_secret, latest, sender=sender, control_id=control_id, key=message_key, at=when)
    pid = f.first("PID")
    person = person_in(f, pid, "PID", sender, key_secret)
    resources = _patient_and_practice(f, pid, person, latest)
    pv1 = f.first("PV1")
    if trigger in ("A01", "A02", "A03", "A04", "A11", "A12", "A13") and pv1 is None:
        raise InvalidMessageError(f"PV1 is required in an ADT^{trigger}", ("PV1",), code="required")
    if trigger == "A12" and not f.get(pv1, 3):  # (else the stay would stay where the cancelled transfer put it)
        raise InvalidMessageError(
            "PV1-3 (the location before the transfer this cancels) is required in an ADT^A12",
            ("PV1-3",),
            code="required",
        )
    if pv1 is not None and trigger not in ("A28", "A31"):
        resources.append(encounter(f, pv1, trigger, sender, message_key, person.key, latest))
    return [_event(trigger, sender, control_id, message_key, when, person.key, resources)]


def _event_time(f: Fields, msh: Any, latest: datetime | None) -> datetime:
    evn = f.get(f.first("EVN"), 2)
    where = "EVN-2" if evn else "MSH-7"
    when = dt.timestamp(evn or f.get(msh, 7), where)
    if when is None:
        raise InvalidMessageError("MSH-7 (date/time of message) is required", ("MSH-7",), code="required")
    dt.not_future(when, latest, where)
    return when


def _trigger(f: Fields, msh: Any) -> str:
    kind, trigger = f.get(msh, 9, 1), f.get(msh, 9, 2)
    version = f.get(msh, 12)
    if version and not version.startswith("2."):
        raise UnsupportedMessageError(f"HL7 version {version} is not supported (2.x only)", ("MSH-12",))
    if kind != "ADT":
        raise UnsupportedMessageError(
            f"message type {kind or '(empty)'} is not accepted here: this listener takes ADT", ("MSH-9",)
        )
    if trigger not in TRIGGERS:
        raise UnsupportedMessageError(
            f"ADT^{trigger or '(empty)'} is not supported; supported events: {', '.join(TRIGGERS)}",
            ("MSH-9.2",),
        )
    return trigger


def _event(
    trigger: str, sender: str, control_id: str, event_key: str, when: datetime, key: str, resources: list[Json]
) -> MappedEvent:
    for resource in resources:
        _validate(resource)
    bundle: Json = {"resourceType": "Bundle", "type": "collection", "timestamp": dt.fhir_datetime(when)}
    bundle["entry"] = [{"resource": r} for r in resources]
    return MappedEvent(
        event_type=TRIGGERS[trigger].type,
        control_id=control_id,
        sender=sender,
        source=f"urn:ods:{sender}",
        event_id=stable_id("hl7v2", sender, event_key),
        event_time=dt.utc(when),
        person_key=key,
        payload=bundle,
    )


_MODELS: dict[str, Any] = {"Patient": Patient, "Encounter": Encounter, "Organization": Organization}


def _validate(resource: Json) -> None:
    try:
        _MODELS[resource["resourceType"]].model_validate(resource)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidMessageError(
            f"{resource['resourceType']} would not be valid FHIR: {where}: {first['msg']}",
            (resource["resourceType"],),
        ) from exc


def _patient_and_practice(f: Fields, pid: Any, person: Person, latest: datetime | None) -> list[Json]:
    patient: Json = {"resourceType": "Patient", "id": person.key, "identifier": person.identifiers}
    # (PID-32 left empty says nothing of the status: the record keeps the one it holds for this number)
    status = next((r[0][4:] for r in f.reps(pid, 32) if r[0].startswith("NSTS")), "")
    if status in VERIFICATION and patient["identifier"][0]["system"] == NHS_SYSTEM:
        coding = {"system": VERIFICATION_SYSTEM, "code": status, "display": VERIFICATION[status]}
        ext = {"url": VERIFICATION_URL, "valueCodeableConcept": {"coding": [coding]}}
        patient["identifier"][0]["extension"] = [ext]
    _demographics(f, pid, patient, latest)
    resources = [patient]
    deleted = [element for n, element in _DELETABLE if f.nulled(pid, n)]
    deleted += ["generalPractitioner"] if f.nulled(f.first("PD1"), 3) else []
    deleted += [VERIFICATION_REMOVED] if f.nulled(pid, 32) else []
    if deleted:  # `""`: delete what the record holds (an empty field leaves it: hub.core.record_content)
        patient["extension"] = [{"url": REMOVED_URL, "valueCode": element} for element in deleted]
    practice = next((x for x in f.reps(f.first("PD1"), 3) if _ods_code(x)), None)
    if practice:
        ods = _ods_code(practice)
        org_id = stable_id("ods", ods)
        org: Json = {"resourceType": "Organization", "id": org_id}
        org["identifier"] = [{"system": ODS_SYSTEM, "value": ods}]
        if practice[0]:
            org["name"] = practice[0]
        patient["generalPractitioner"] = [{"reference": f"Organization/{org_id}"}]
        resources.append(org)
    return resources


def _ods_code(xon: list[str]) -> str:
    """A practice's ODS code from an XON (PD1-3): XON-10 (organization identifier, v2.5 on) where
    valued, else XON-3 (ID number, deprecated in v2.5 but what ITK's v2.4 profile uses)."""
    return (xon[9] if len(xon) > 9 else "") or (xon[2] if len(xon) > 2 else "")


# PID fields whose explicit null `""` deletes a Patient element the record holds
_DELETABLE = (
    (5, "name"),
    (7, "birthDate"),
    (8, "gender"),
    (11, "address"),
    (13, "telecom"),
    (29, "deceasedDateTime"),  # a death recorded in error, withdrawn
    (30, "deceasedBoolean"),
)


def _demographics(f: Fields, pid: Any, patient: Json, latest: datetime | None) -> None:
    names = [n for n in (dt.human_name(x) for x in f.reps(pid, 5)) if n]
    if names:
        patient["name"] = names
    if gender := GENDER.get(f.get(pid, 8).upper()):
        patient["gender"] = gender
    if born := dt.birth_date(f.get(pid, 7)):
        patient["birthDate"] = born
    if addresses := [a for a in (dt.address(x) for x in f.reps(pid, 11)) if a]:
        patient["address"] = addresses
    if telecoms := [t for t in (dt.telecom(x) for x in f.reps(pid, 13)) if t]:
        patient["telecom"] = telecoms
    died, indicator = _life(f, pid, latest), f.get(pid, 30).upper()
    if died:  # PID-29 wins over PID-30, even an `N` (the IG maps PID-30 only where PID-29 is not valued)
        patient["deceasedDateTime"] = dt.fhir_datetime(died)
    elif indicator in ("Y", "N"):  # `N`: not deceased, which withdraws a death the record holds
        patient["deceasedBoolean"] = indicator == "Y"


def _life(f: Fields, pid: Any, latest: datetime | None) -> datetime | None:
    """PID-29, the date of death, checked with PID-7: neither in the future, nor death before birth
    (each time stamp covering its whole precision: a death dated the day of a birth at 06:30 is not
    before it). A typo there would misstate the person's age band in the KPIs, or mark them dead."""
    born, died = dt.timestamp(f.get(pid, 7), "PID-7"), dt.timestamp(f.get(pid, 29), "PID-29")
    dt.not_future(born, latest, "PID-7", f.get(pid, 7))
    dt.not_future(died, latest, "PID-29")
    if born is not None and died is not None and dt.period_end(died, f.get(pid, 29)) <= born:
        raise InvalidMessageError(
            f"PID-29 (date of death) {dt.fhir_datetime(died)} is before PID-7 (date of birth) {f.get(pid, 7)}",
            ("PID-29",),
            code="value",
        )
    return died


def _merges(
    f: Fields, secret: bytes, latest: datetime | None, *, sender: str, control_id: str, key: str, at: datetime
) -> list[MappedEvent]:
    """An A40: one event a PID-MRG pair. A pair whose two records are one person already (two hospital
    numbers with one NHS number, the commonest real A40: the person key comes from the NHS number) is
    that person updated, not merged into themselves (see _retired_numbers)."""
    pairs, current = [], None
    for segment in f.message:
        name = str(segment[0])
        if name == "PID":
            current = segment
        elif name == "MRG" and current is not None:
            pairs.append((current, segment))
            current = None
    if not pairs:
        raise InvalidMessageError("ADT^A40 needs a PID followed by an MRG", ("MRG-1",), code="required")
    events = []
    for index, (pid, mrg) in enumerate(pairs, start=1):
        try:
            survivor = person_in(f, pid, "PID", sender, secret)
            retired = person_in(f, mrg, "MRG", sender, secret)
            pair = key if len(pairs) == 1 else f"{key}#{index}"
            if retired.key == survivor.key:
                numbers = _retired_numbers(survivor, retired)
                resources = _patient_and_practice(f, pid, survivor, latest)
                resources[0]["identifier"] = [*resources[0]["identifier"], *numbers]
                events.append(_event(_SAME_PERSON, sender, control_id, pair, at, survivor.key, resources))
                continue
            resources = _patient_and_practice(f, pid, survivor, latest)
            resources[0]["link"] = [{"other": {"reference": f"Patient/{retired.key}"}, "type": "replaces"}]
            old = {"resourceType": "Patient", "id": retired.key, "active": False, "identifier": retired.identifiers}
            old["link"] = [{"other": {"reference": f"Patient/{survivor.key}"}, "type": "replaced-by"}]
            events.append(_event("A40", sender, control_id, pair, at, survivor.key, [*resources, old]))
        except InvalidMessageError as error:  # (naming the pair: MRG[2]-1 in the second)
            error.expression = tuple(_in_pair(where, index) for where in error.expression)
            raise
    return events


def _in_pair(where: str, index: int) -> str:
    """An error's place in the index-th PID-MRG pair of an A40: PID-7 in the second is PID[2]-7."""
    return re.sub(r"^(PID|MRG)(?=-)", rf"\g<1>[{index}]", where) if index > 1 else where


_SAME_PERSON = "A31"  # an A40 within one person is applied as what it is: an update of person information


def _retired_numbers(survivor: Person, retired: Person) -> list[Json]:
    """For an A40 pair of one person (MRG-1 keyed as PID-3 is): the identifiers MRG-1 gives that PID-3
    does not, the hospital numbers retired, kept on the person with use `old` (FHIR: no longer valid but
    found by a search, as after an account merge). MRG-1 naming none is the surviving record merged into
    itself, a sender's error, refused."""
    current = {(i["system"], i["value"]) for i in survivor.identifiers}
    numbers = [{**i, "use": "old"} for i in retired.identifiers if (i["system"], i["value"]) not in current]
    if not numbers:
        raise InvalidMessageError("MRG-1 names the surviving record itself", ("MRG-1",), code="value")
    return numbers
