"""A later message that says less than the record holds, through the record's rules (hub.core.record over
the in-memory store, events mapped from real ADT): PID-30 `N` withdraws a death, an NHS number sent
again without PID-32 keeps its verification status, and a stay sent again without PV1-2 keeps its class."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from adapters.hl7v2.to_fhir import map_message
from hub.core.errors import InvalidMessageError
from hub.core.ports import RecordEvent, StoredResource
from hub.core.record import apply_events
from hub.core.record_content import next_content
from hub.store.memory import MemoryRecordStore
from tests.builders import an_adt

SECRET = b"says-less-secret"
VERIFIED = "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-NHSNumberVerificationStatus"
DISCHARGE_METHOD = "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-DischargeMethod"
IMP = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"}


def the_record(*raws: bytes) -> MemoryRecordStore:
    store = MemoryRecordStore()
    for raw in raws:
        events = [
            RecordEvent(m.event_id, m.event_type, m.source, m.event_time, m.person_key, m.payload)
            for m in map_message(raw, key_secret=SECRET)
        ]
        with store.unit_of_work() as uow:
            apply_events(uow, events)
            uow.commit()
    return store


def the_one(store: MemoryRecordStore, kind: str) -> dict[str, Any]:
    [found] = store.reader().search(kind, None)
    return found


def deceased(patient: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in patient.items() if k.startswith("deceased")}


def status_of(patient: dict[str, Any]) -> list[str]:
    nhs = patient["identifier"][0]
    return [e["valueCodeableConcept"]["coding"][0]["code"] for e in nhs.get("extension") or [] if e["url"] == VERIFIED]


# --- 1. PID-30 N --------------------------------------------------------------------------------


def test_pid_30_n_an_hour_after_a_recorded_death_withdraws_it_in_a_new_version() -> None:
    died = an_adt(trigger="A08", control_id="D1", event_time="202612021130", died="20261202103000", death_indicator="Y")
    alive = an_adt(trigger="A08", control_id="D2", event_time="202612021230", death_indicator="N")

    patient = the_one(the_record(died, alive), "Patient")

    assert deceased(patient) == {"deceasedBoolean": False}  # the exact shape coordination reads as a correction
    assert patient["meta"]["versionId"] == "2"


def test_a_death_recorded_again_after_pid_30_n_replaces_the_false() -> None:
    alive = an_adt(trigger="A08", control_id="D1", event_time="202612021130", death_indicator="N")
    died = an_adt(trigger="A08", control_id="D2", event_time="202612021230", died="20261202120000", death_indicator="Y")

    assert deceased(the_one(the_record(alive, died), "Patient")) == {"deceasedDateTime": "2026-12-02T12:00:00+00:00"}


# --- 2. PID-32 left empty -----------------------------------------------------------------------


def test_an_nhs_number_sent_again_without_pid_32_keeps_its_verification_status() -> None:
    registered = an_adt(trigger="A28", control_id="R1", event_time="202611010900", reliability="NSTS01")
    admitted = an_adt(trigger="A01", control_id="R2", event_time="202611010930", reliability="")

    patient = the_one(the_record(registered, admitted), "Patient")

    assert status_of(patient) == ["01"]
    assert patient["meta"]["versionId"] == "1"  # nothing new was said of the person


def test_a_verification_status_sent_replaces_the_one_held_and_the_explicit_null_deletes_it() -> None:
    registered = an_adt(trigger="A28", control_id="R1", event_time="202611010900", reliability="NSTS01")
    traced = an_adt(trigger="A31", control_id="R2", event_time="202611010930", reliability="NSTS02")
    deleted = an_adt(trigger="A31", control_id="R3", event_time="202611011000", reliability='""')

    assert status_of(the_one(the_record(registered, traced), "Patient")) == ["02"]
    patient = the_one(the_record(registered, deleted), "Patient")
    assert status_of(patient) == []
    assert "extension" not in patient  # the deletion is done, not kept as data


def test_another_nhs_number_does_not_inherit_the_held_status() -> None:
    # (the overlay itself: over HL7 another NHS number is another person key, so another Patient)
    nhs = "https://fhir.nhs.uk/Id/nhs-number"
    held = {"resourceType": "Patient", "id": "p1", "meta": {"source": "urn:ods:RXX"}}
    held["identifier"] = [{"system": nhs, "value": "9434765919", "extension": [_verified("01")]}]
    current = StoredResource("Patient", "p1", "p1", 1, datetime(2026, 11, 1, tzinfo=UTC), "e1", held)
    event = RecordEvent("e2", "uk.nhs.carehub.patient.updated.v1", "urn:ods:RXX", current.event_time, "p1", {})

    same = {"resourceType": "Patient", "id": "p1", "identifier": [{"system": nhs, "value": "9434765919"}]}
    other = {"resourceType": "Patient", "id": "p1", "identifier": [{"system": nhs, "value": "9990000018"}]}
    assert status_of(next_content(event, same, current)) == ["01"]
    assert status_of(next_content(event, other, current)) == []


def _verified(code: str) -> dict[str, Any]:
    return {"url": VERIFIED, "valueCodeableConcept": {"coding": [{"code": code}]}}


# --- 3. PV1-2 left empty ------------------------------------------------------------------------


def test_a_transfer_and_discharge_without_pv1_2_keep_the_inpatient_class() -> None:
    admitted = an_adt(trigger="A01", control_id="C1", event_time="202611010930", patient_class="I")
    moved = an_adt(trigger="A02", control_id="C2", event_time="202611021000", patient_class="")
    discharged = an_adt(trigger="A03", control_id="C3", event_time="202611031105", patient_class="")

    assert the_one(the_record(admitted, moved), "Encounter")["class"] == IMP
    encounter = the_one(the_record(admitted, moved, discharged), "Encounter")
    assert encounter["class"] == IMP
    assert encounter["status"] == "finished"


def test_a_stay_first_heard_of_without_pv1_2_is_unknown_until_a_class_is_said() -> None:
    discharged = an_adt(trigger="A03", control_id="C1", event_time="202611031105", patient_class="")
    said = an_adt(trigger="A08", control_id="C2", event_time="202611031200", patient_class="O")

    unknown = {"system": "http://terminology.hl7.org/CodeSystem/v2-0004", "code": "U"}
    assert the_one(the_record(discharged), "Encounter")["class"] == unknown
    ambulatory = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"}
    assert the_one(the_record(discharged, said), "Encounter")["class"] == ambulatory


# --- 5. PV1-37 ----------------------------------------------------------------------------------


def test_a_cancelled_discharge_takes_its_destination_and_method_with_it() -> None:
    admitted = an_adt(trigger="A01", control_id="C1", event_time="202611010930")
    discharged = an_adt(trigger="A03", control_id="C2", event_time="202611031105", disposition="1", discharged_to="54")
    cancelled = an_adt(trigger="A13", control_id="C3", event_time="202611031200", disposition="1", discharged_to="54")

    encounter = the_one(the_record(admitted, discharged), "Encounter")
    assert encounter["hospitalization"]["dischargeDisposition"]["coding"][0]["code"] == "54"
    assert encounter["extension"][0]["url"] == DISCHARGE_METHOD
    encounter = the_one(the_record(admitted, discharged, cancelled), "Encounter")
    assert "hospitalization" not in encounter
    assert "extension" not in encounter


def test_pv1_37s_effective_date_is_never_taken_for_the_destinations_name() -> None:
    discharged = an_adt(trigger="A03", control_id="C1", disposition="1", discharged_to="54^20261103")
    epic = an_adt(trigger="A03", control_id="C2", disposition="Home", discharged_to="1^20261103")

    stay = the_one(the_record(discharged), "Encounter")["hospitalization"]
    assert stay["dischargeDisposition"] == {
        "coding": [{"system": "https://fhir.hl7.org.uk/CodeSystem/UKCore-DischargeDestinationEngland", "code": "54"}],
        "text": "54",
    }
    assert the_one(the_record(epic), "Encounter")["hospitalization"]["destination"] == {"display": "1"}


def test_a_discharge_said_again_without_a_method_drops_the_one_it_replaces() -> None:
    discharged = an_adt(trigger="A03", control_id="C1", event_time="202611031105", disposition="1", discharged_to="54")
    corrected = an_adt(trigger="A08", control_id="C2", event_time="202611031200", disposition="Home")

    encounter = the_one(the_record(discharged, corrected), "Encounter")

    assert encounter["hospitalization"]["dischargeDisposition"] == {"text": "Home"}
    assert "extension" not in encounter  # (the method "1" went with the disposition it came with)


def test_a_held_resource_of_odd_shape_is_still_overlaid_never_a_reason_to_stop() -> None:
    nhs = "https://fhir.nhs.uk/Id/nhs-number"
    said = {"resourceType": "Patient", "id": "p1", "identifier": [{"system": nhs, "value": "9434765919"}]}
    cancel = RecordEvent("e3", "uk.nhs.carehub.encounter.discharge-cancelled.v1", "urn:ods:RXX", AT, "p1", {})
    for odd in (
        {"system": nhs, "value": "9434765919", "extension": {"url": VERIFIED}},
        {"system": nhs, "value": "9434765919", "extension": ["01"]},
        {"system": nhs, "value": ["9434765919"]},
    ):
        held = {"resourceType": "Patient", "id": "p1", "identifier": [odd], "meta": {"source": "urn:ods:RXX"}}
        current = StoredResource("Patient", "p1", "p1", 1, AT, "e1", held)
        assert next_content(EVENT, said, current)["identifier"][0] == said["identifier"][0], odd
        if isinstance(odd, dict) and "extension" in odd:  # (said so: the sender's, as it is)
            assert next_content(EVENT, {**said, "identifier": [odd]}, current)["identifier"] == [odd], odd
    stay = {"resourceType": "Encounter", "id": "v1", "extension": {"url": DISCHARGE_METHOD}, "status": "finished"}
    current = StoredResource("Encounter", "v1", "p1", 1, AT, "e1", stay)
    assert next_content(cancel, {"resourceType": "Encounter", "id": "v1"}, current)["extension"] == stay["extension"]


def test_another_senders_deletion_is_carried_out_not_kept() -> None:
    first = an_adt(trigger="A28", control_id="C1", event_time="202611031105")
    other = an_adt(trigger="A08", control_id="C2", event_time="202611031200", sender="RYY", reliability='""')

    patient = the_one(the_record(first, other), "Patient")

    assert patient["meta"]["source"] == "urn:ods:RYY"
    assert "extension" not in patient
    assert status_of(patient) == []


AT = datetime(2026, 11, 3, 11, 5, tzinfo=UTC)
EVENT = RecordEvent("e2", "uk.nhs.carehub.patient.updated.v1", "urn:ods:RXX", AT, "p1", {})


def test_a_cancelled_transfer_puts_the_person_back_where_they_were() -> None:
    # A12: PV1-3 holds the location before the transfer that is undone (v2.5 section 3.3.12)
    admitted = an_adt(trigger="A01", control_id="C1", event_time="202611010930")
    moved = an_adt(trigger="A02", control_id="C2", event_time="202611021000").replace(
        b"WARD1^BAY2^BED3", b"WARD9^BAY1^BED1"
    )
    undone = an_adt(trigger="A12", control_id="C3", event_time="202611021030")

    [event] = map_message(undone, key_secret=SECRET)
    assert event.event_type == "uk.nhs.carehub.encounter.transfer-cancelled.v1"
    assert the_one(the_record(admitted, moved), "Encounter")["location"] == [
        {"location": {"display": "WARD9 BAY1 BED1"}}
    ]
    encounter = the_one(the_record(admitted, moved, undone), "Encounter")
    assert encounter["location"] == [{"location": {"display": "WARD1 BAY2 BED3"}}]
    assert (encounter["status"], encounter["class"]["code"]) == ("in-progress", "IMP")


def test_a_cancelled_transfer_that_does_not_say_where_the_person_is_back_is_refused_naming_pv1_3() -> None:
    nowhere = an_adt(trigger="A12", control_id="C4", event_time="202611021030").replace(b"WARD1^BAY2^BED3", b"")
    with pytest.raises(InvalidMessageError) as refused:
        map_message(nowhere, key_secret=SECRET)
    assert (refused.value.expression, refused.value.code) == (("PV1-3",), "required")


def test_a_second_hospital_silent_about_a_death_never_undoes_it_but_its_pid_30_n_does() -> None:
    died = an_adt(trigger="A08", control_id="D1", event_time="202612021130", died="20261202103000", death_indicator="Y")
    silent = an_adt(trigger="A08", control_id="D2", event_time="202612021230", sender="RYY")
    alive = an_adt(trigger="A08", control_id="D3", event_time="202612021330", sender="RYY", death_indicator="N")

    patient = the_one(the_record(died, silent), "Patient")
    assert patient["meta"]["source"] == "urn:ods:RYY"  # (the second trust's Patient, whole)
    assert deceased(patient) == {"deceasedDateTime": "2026-12-02T10:30:00+00:00"}
    assert deceased(the_one(the_record(died, silent, alive), "Patient")) == {"deceasedBoolean": False}


def test_another_sender_deleting_a_death_element_the_record_does_not_hold_deletes_nothing() -> None:
    # the record holds the death by one element; another sender's "" in the other deletes nothing
    by_flag = an_adt(trigger="A08", control_id="D1", event_time="202612021130", death_indicator="Y")
    by_date = an_adt(trigger="A08", control_id="D2", event_time="202612021130", died="20261202103000")
    date_deleted = an_adt(trigger="A08", control_id="D3", event_time="202612021230", sender="RYY", died='""')
    flag_deleted = an_adt(trigger="A08", control_id="D4", event_time="202612021230", sender="RYY", death_indicator='""')

    assert deceased(the_one(the_record(by_flag, date_deleted), "Patient")) == {"deceasedBoolean": True}
    assert deceased(the_one(the_record(by_date, flag_deleted), "Patient")) == {
        "deceasedDateTime": "2026-12-02T10:30:00+00:00"
    }
    assert deceased(the_one(the_record(by_flag, flag_deleted), "Patient")) == {}  # (what was held, deleted)
