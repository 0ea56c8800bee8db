"""ADT^A04 (register a patient: an ED attendance or an outpatient visit, the ITK registration) is
taken as an encounter the person attended: encounter.admitted, class from PV1-2, status in-progress
(or as PV1 says), so the A03 that ends the same visit closes it; and it opens no coordinator task."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from adapters.hl7v2.message import split_batch
from adapters.hl7v2.service import HospitalIntake
from adapters.hl7v2.to_fhir import MappedEvent, map_message
from hub.core.coordination import Positioned, process
from hub.core.errors import InvalidMessageError, UnsupportedMessageError
from hub.core.ports import RecordEvent
from hub.core.record import apply_events
from hub.core.tasks import Engine
from hub.rules import DEFAULT
from hub.store.memory import MemoryCoordinationStore, MemoryRecordStore
from schemas.coordination_rules import CoordinationRules
from schemas.events import coordination as co
from schemas.events import encounter as enc
from tests import locality_month as month
from tests.builders import an_adt
from tests.fakes import RecordingBroker

SECRET = b"registrations"
REAL = "9434765919"  # for the ITK example's placeholder 3333333333
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"


def encounter_of(event: MappedEvent) -> dict[str, Any]:
    [found] = [e["resource"] for e in event.payload["entry"] if e["resource"]["resourceType"] == "Encounter"]
    return found


def itk_registration(samples: Path) -> bytes:
    raw = (samples / "hl7v2/nhs-itk/itk-v2.4-ADT_A04-register-outpatient.hl7").read_bytes()
    assert raw.count(b"|3333333333^^^NHS|") == 1
    return raw.replace(b"|3333333333^^^NHS|", f"|{REAL}^^^NHS|".encode())


def as_record_event(event: MappedEvent, subject: str | None = None) -> RecordEvent:
    return RecordEvent(
        event.event_id, event.event_type, event.source, event.event_time, subject or event.person_key, event.payload
    )


def test_the_itk_outpatient_registration_is_an_outpatient_encounter_in_progress(samples: Path) -> None:
    [event] = map_message(itk_registration(samples), key_secret=SECRET)
    assert event.event_type == enc.ENCOUNTER_ADMITTED.type
    encounter = encounter_of(event)
    assert encounter["class"] == {"system": ACT_CODE, "code": "AMB"}  # PV1-2 O
    assert encounter["status"] == "in-progress"
    assert encounter["period"] == {"start": "2010-11-01T16:00:00+00:00"}  # PV1-44


def test_the_itk_registration_as_published_names_its_placeholder_not_its_event(samples: Path) -> None:
    raw = (samples / "hl7v2/nhs-itk/itk-v2.4-ADT_A04-register-outpatient.hl7").read_bytes()
    with pytest.raises(InvalidMessageError) as refused:
        map_message(raw, key_secret=SECRET)
    assert not isinstance(refused.value, UnsupportedMessageError)  # AE at PID-3, no longer AR at MSH-9.2
    assert refused.value.expression == ("PID-3",)
    assert "placeholder" in str(refused.value)


@pytest.mark.parametrize(("patient_class", "code"), [("E", "EMER"), ("O", "AMB")])
def test_an_ed_or_outpatient_registration_gives_the_class_pv1_2_says(patient_class: str, code: str) -> None:
    [event] = map_message(an_adt(trigger="A04", patient_class=patient_class), key_secret=SECRET)
    assert event.event_type == enc.ENCOUNTER_ADMITTED.type
    assert (encounter_of(event)["class"]["code"], encounter_of(event)["status"]) == (code, "in-progress")


def test_a_registration_status_follows_pv1_when_it_says_more() -> None:
    planned = an_adt(trigger="A04", patient_class="P")
    [event] = map_message(planned, key_secret=SECRET)
    assert encounter_of(event)["status"] == "planned"  # the v2-to-FHIR PatientClass[EncounterStatus] map
    ended = an_adt(trigger="A03", patient_class="E").replace(b"ADT^A03^ADT_A03", b"ADT^A04^ADT_A01")
    [event] = map_message(ended.replace(b"EVN|A03|", b"EVN|A04|"), key_secret=SECRET)
    assert encounter_of(event)["status"] == "finished"  # PV1-45 valued: over already


def test_the_a03_for_the_same_visit_closes_the_attendance_on_the_record() -> None:
    store = MemoryRecordStore()
    registered = an_adt(trigger="A04", patient_class="E", control_id="R1", visit="ED77", event_time="202611010931")
    discharged = an_adt(trigger="A03", patient_class="E", control_id="R2", visit="ED77", event_time="202611031105")
    events = [as_record_event(e) for raw in (registered, discharged) for e in map_message(raw, key_secret=SECRET)]
    with store.unit_of_work() as uow:
        apply_events(uow, events[:1])
        uow.commit()
    [attending] = store.reader().search("Encounter", None)
    assert (attending["status"], attending["class"]["code"]) == ("in-progress", "EMER")
    with store.unit_of_work() as uow:
        apply_events(uow, events[1:])
        uow.commit()
    [closed] = store.reader().search("Encounter", None)
    assert closed["id"] == attending["id"]
    assert (closed["status"], closed["class"]["code"]) == ("finished", "EMER")


def test_an_ed_attendance_opens_no_task_for_a_person_on_a_caseload_and_its_end_is_any_a03s() -> None:
    """The rules engine opens nothing on encounter.admitted; the A03 that ends the attendance opens
    the discharge follow-up for someone on a caseload, as an A03 for an ED visit always did."""
    engine = Engine(CoordinationRules.model_validate(yaml.safe_load(DEFAULT.read_text())))
    store = MemoryCoordinationStore()
    opened: list[RecordEvent] = []
    [registered] = map_message(an_adt(trigger="A04", patient_class="E", control_id="E1"), key_secret=SECRET)
    [discharged] = map_message(an_adt(trigger="A03", patient_class="E", control_id="E2"), key_secret=SECRET)
    on_caseload = month.episode("P1", month.at(1, 9), "c-ann")
    for event in (on_caseload, as_record_event(registered, month.PEOPLE["P1"])):
        with store.unit_of_work() as uow:
            opened += process(engine, uow, [Positioned(event, 0)])
            uow.commit()
    before = [e.payload["code"]["coding"][0]["code"] for e in opened if e.type == co.TASK_CREATED.type]
    with store.unit_of_work() as uow:
        after = process(engine, uow, [Positioned(as_record_event(discharged, month.PEOPLE["P1"]), 0)])
        uow.commit()
    assert "discharge-follow-up" not in before
    assert [e.payload["code"]["coding"][0]["code"] for e in after if e.type == co.TASK_CREATED.type] == [
        "discharge-follow-up"
    ]


async def test_the_batch_sample_registration_is_accepted_aa(samples: Path) -> None:
    raw = (samples / "hl7v2/python-hl7/python-hl7-v2.5-batch-BHS-ADT_A04.hl7").read_bytes()
    broker = RecordingBroker()
    hub = HospitalIntake(broker, key_secret=SECRET, clock=lambda: datetime.fromisoformat("2026-11-25T09:30:00+00:00"))  # type: ignore[arg-type]
    [outcome] = await hub.ingest(raw, "file:batch")
    assert (outcome.code, outcome.control_id, outcome.events) == ("AA", "12334456778890", 1)
    [message] = split_batch(raw)
    [event] = map_message(message, key_secret=SECRET)
    assert encounter_of(event)["class"]["code"] == "AMB"  # PV1-2 O
