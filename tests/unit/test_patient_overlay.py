"""What a hospital's message says of a Patient is laid over what the record holds, as HL7 v2 means
it: a field left empty, or a segment left out, is no change (a transfer or discharge often carries
part of PID and no PD1); only the explicit null `""` deletes. Identifiers accumulate by system (each
hospital's own number, the NHS number), so one trust's message does not drop another's. Through the
real HL7 adapter into the real SQLite record."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adapters.hl7v2.to_fhir import map_message
from hub.core.ports import RecordEvent
from hub.core.record import apply_events
from hub.store.database import open_engine
from hub.store.sql import SqlRecordReader, SqlRecordUnitOfWork
from tests.builders import an_adt

SECRET = b"overlay-secret"
NHS = "https://fhir.nhs.uk/Id/nhs-number"


def the_patient(tmp_path: Path, *messages: bytes) -> dict[str, Any]:
    engine = open_engine(f"sqlite:///{tmp_path / 'record.db'}")
    for raw in messages:
        events = [
            RecordEvent(m.event_id, m.event_type, m.source, m.event_time, m.person_key, m.payload)
            for m in map_message(raw, key_secret=SECRET)
        ]
        with SqlRecordUnitOfWork(engine) as uow:
            apply_events(uow, events)
            uow.commit()
    [patient] = SqlRecordReader(engine).search("Patient", None)
    engine.dispose()
    return patient


def transfer(**changes: Any) -> bytes:
    """An A02 an hour after the admission, saying only the NHS number: no PD1, PID-7 and the MRN empty."""
    said: dict[str, Any] = {"mrn": None, "practice": None, "event_time": "202611011030"}
    return an_adt(trigger="A02", control_id="T1", **(said | changes)).replace(b"|19400312|F|", b"||F|")


def test_a_transfer_that_leaves_fields_empty_keeps_the_practice_the_birth_date_and_the_mrn(tmp_path: Path) -> None:
    admitted = an_adt(trigger="A01", control_id="A1", mrn="H111", event_time="202611010930")

    patient = the_patient(tmp_path, admitted, transfer())

    assert patient["meta"]["versionId"] == "1"  # nothing new was said
    assert patient["birthDate"] == "1940-03-12"
    assert patient["generalPractitioner"]
    assert [i["system"] for i in patient["identifier"]] == [NHS, "https://fhir.nhs.uk/Id/MRN/RXX"]


def test_only_the_explicit_null_deletes(tmp_path: Path) -> None:
    admitted = an_adt(trigger="A01", control_id="A1", mrn="H111", event_time="202611010930")
    deleted = transfer().replace(b"||F|", b'|""|F|').replace(b"SMITH^JANE", b"SMITH^JANE")

    patient = the_patient(tmp_path, admitted, deleted)

    assert "birthDate" not in patient
    assert patient["generalPractitioner"]  # PD1 left out: kept
    assert patient["meta"]["versionId"] == "2"
    assert "extension" not in patient  # the deletion is done, not kept as data


def test_another_trusts_patient_replaces_it_whole_so_it_never_supplies_the_first_ones_data(tmp_path: Path) -> None:
    # (review: laid over RZZ's, RYY's Patient made RYY the supplier of RZZ's number, address and practice,
    # readable by RYY with no agreement at all; one Patient per sender is work not done yet)
    first = an_adt(trigger="A01", control_id="A1", sender="RZZ", mrn="RZZ125", event_time="202611010930")
    second = an_adt(trigger="A08", control_id="B1", sender="RYY", mrn="RYY9", practice=None, event_time="202611020930")

    patient = the_patient(tmp_path, first, second)

    assert patient["meta"]["source"] == "urn:ods:RYY"
    assert [(i["system"].rsplit("/", 1)[-1], i["value"]) for i in patient["identifier"]] == [
        ("nhs-number", "9434765919"),
        ("RYY", "RYY9"),
    ]
    assert "generalPractitioner" not in patient


def test_a_number_retired_within_one_person_stays_after_the_senders_next_message(tmp_path: Path) -> None:
    admitted = an_adt(trigger="A01", control_id="A1", mrn="OLD1", event_time="202611010930")
    merged = an_adt(trigger="A40", control_id="A2", mrn="NEW1", merged_mrn="OLD1", event_time="202611011000")
    merged = merged.replace(b"MRG|OLD1^^^RXX^MR", b"MRG|9434765919^^^NHS^NH~OLD1^^^RXX^MR")  # one person
    updated = an_adt(trigger="A08", control_id="A3", mrn="NEW1", event_time="202611011100")

    patient = the_patient(tmp_path, admitted, merged, updated)

    numbers = {(i["value"], i.get("use")) for i in patient["identifier"]}
    assert ("NEW1", None) in numbers and ("OLD1", "old") in numbers


def test_a_death_withdrawn_is_removed_and_one_deceased_element_is_ever_held(tmp_path: Path) -> None:
    died = an_adt(trigger="A08", control_id="D1", event_time="202611010930", extra_segments=())
    died = died.replace(b"|||||||||||||||||||||NSTS01", b"||||||||||||||||||202611010900|Y||NSTS01")
    withdrawn = an_adt(trigger="A08", control_id="D2", event_time="202611011000")
    withdrawn = withdrawn.replace(b"|||||||||||||||||||||NSTS01", b'||||||||||||||||||""|N||NSTS01')
    again = an_adt(trigger="A08", control_id="D3", event_time="202611011100")
    again = again.replace(b"|||||||||||||||||||||NSTS01", b"|||||||||||||||||||Y||NSTS01")

    assert "deceasedDateTime" in the_patient(tmp_path / "a", died)
    patient = the_patient(tmp_path / "b", died, withdrawn)
    assert {k: v for k, v in patient.items() if k.startswith("deceased")} == {"deceasedBoolean": False}
    patient = the_patient(tmp_path / "c", died, again)
    assert [k for k in patient if k.startswith("deceased")] == ["deceasedBoolean"]


def test_a_deletion_of_what_the_record_never_held_is_not_kept_as_data(tmp_path: Path) -> None:
    patient = the_patient(tmp_path, transfer().replace(b"||F|", b'|""|F|'))

    assert "extension" not in patient
    assert "birthDate" not in patient
