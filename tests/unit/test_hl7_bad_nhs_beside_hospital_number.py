"""An NHS number that fails its check is refused AE naming PID-3, and the message dead-lettered, even when
a hospital number stands beside it (PID-3 `9434760012^^^NHS^NH~MRN005^^^RCB^MR`).

Accepting it was tried (AA with an ERR of severity W, the bad number dropped and the person keyed by the
hospital number) and withdrawn, because the person's key would change under them, from their NHS number
to the hospital number, and the hub would file the message under a ghost:

* a person with a verified NHS number, on a case list or caseload, discharged with a mistyped NHS number:
  the A03 reaches the rules engine as someone on no case list, so their discharge follow-up task never
  opens (the identity link to their verified NHS number merges the ghost into them later, but a merge
  brings no task);
* a person whose NHS number is not verified: the A03 names the stay they were admitted to (the same visit
  number, the same Encounter), so the record moves that Encounter onto a new Patient known only by the
  hospital number, and the real person loses the stay, with no conflict reported.

Refused, the message is seen (`carehub deadletters`) and recovered: the sender corrects the number and
sends it again. These tests fail if the message is ever accepted again."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest
import yaml

from adapters.hl7v2.service import HospitalIntake
from adapters.hl7v2.to_fhir import MappedEvent, map_message
from hub.core.coordination import Positioned, process
from hub.core.errors import InvalidMessageError
from hub.core.ports import RecordEvent
from hub.core.tasks import Engine
from hub.rules import DEFAULT
from hub.store.memory import MemoryCoordinationStore
from schemas.coordination_rules import CoordinationRules
from schemas.events import coordination as co
from schemas.topics import DEAD_LETTER, EVENTS
from tests import locality_month as month
from tests.builders import an_adt
from tests.fakes import RecordingBroker

SECRET = b"bad-nhs"
NOW = datetime(2026, 11, 25, 9, 30, tzinfo=UTC)
BAD = "9434760012"  # fails the Modulus 11 check
THEIRS = "9434765919"  # the person's own NHS number, which BAD was mistyped for


def the_walkthrough_message(control_id: str = "W1", nhs_number: str | None = BAD) -> bytes:
    """An A03 with PID-3 as the trust's engineer sent it: `9434760012^^^NHS^NH~MRN005^^^RCB^MR`."""
    return an_adt(trigger="A03", nhs_number=nhs_number, mrn="MRN005", sender="RCB", control_id=control_id)


def segments(reply: bytes) -> dict[str, list[str]]:
    return {line[:3]: line.split("|") for line in reply.decode().split("\r") if line}


def tasks_opened_by(event: RecordEvent, *, after: RecordEvent) -> list[str]:
    """The task codes the default rules open on `event`, processed on a store that has seen `after`."""
    engine = Engine(CoordinationRules.model_validate(yaml.safe_load(DEFAULT.read_text())))
    store = MemoryCoordinationStore()
    for each in (after, event):
        with store.unit_of_work() as uow:
            opened = process(engine, uow, [Positioned(each, 0)])
            uow.commit()
    return [e.payload["code"]["coding"][0]["code"] for e in opened if e.type == co.TASK_CREATED.type]


def as_record_event(event: MappedEvent) -> RecordEvent:
    return RecordEvent(
        event.event_id, event.event_type, event.source, event.event_time, event.person_key, event.payload
    )


def test_the_mapping_refuses_it_naming_pid_3_without_echoing_the_number() -> None:
    with pytest.raises(InvalidMessageError) as refused:
        map_message(the_walkthrough_message(), key_secret=SECRET)
    assert refused.value.expression == ("PID-3",)
    assert refused.value.code == "value"
    assert "Modulus 11" in refused.value.diagnostics
    assert BAD not in str(refused.value)


async def test_the_hub_answers_ae_with_an_error_at_pid_3_keeps_the_message_and_publishes_nothing() -> None:
    broker = RecordingBroker()
    hub = HospitalIntake(broker, key_secret=SECRET, clock=lambda: NOW)  # type: ignore[arg-type]
    raw = the_walkthrough_message()
    outcome, reply = await hub.accept(raw, "mllp:test")
    assert (outcome.code, outcome.events, outcome.dead_lettered) == ("AE", 0, True)
    said = segments(reply)
    assert said["MSA"][1:3] == ["AE", "W1"]
    assert (said["ERR"][2], said["ERR"][4]) == ("PID^1^3", "E")  # ERR-2 where, ERR-4 severity: an error
    assert broker.on(EVENTS.name) == []  # no event under the hospital number's key, nor any other
    [(_, kept, _, _)] = broker.on(DEAD_LETTER.name)
    assert kept == raw  # whole, for the operator to see and the sender to correct
    [from_a_file] = await hub.ingest(the_walkthrough_message("W2"), "file:x")
    assert (from_a_file.code, from_a_file.dead_lettered) == ("AE", True)


@pytest.mark.parametrize(
    "raw",
    [
        the_walkthrough_message(),
        an_adt(nhs_number=None, mrn="MRN005").replace(b"MRN005^^^RXX^MR", f"MRN005^^^RXX^MR~{BAD}^^^NHS^NH".encode()),
        an_adt(nhs_number=BAD, mrn=None),  # nothing else to know the person by
        an_adt(nhs_number=f"{THEIRS}^^^NHS^NH~{BAD}", mrn="M1"),  # beside a good NHS number: which is theirs?
        an_adt(trigger="A04", patient_class="E", nhs_number=BAD, mrn="M1"),  # an ED attendance
        an_adt(trigger="A40", nhs_number=BAD, mrn="M1", merged_mrn="M0"),  # a merge
    ],
    ids=["hospital-number-after", "hospital-number-first", "alone", "beside-another-nhs-number", "a04", "a40"],
)
async def test_a_bad_nhs_number_is_refused_ae_naming_pid_3_whatever_stands_beside_it(raw: bytes) -> None:
    with pytest.raises(InvalidMessageError) as refused:
        map_message(raw, key_secret=SECRET)
    assert refused.value.expression[0].startswith("PID-3")
    broker = RecordingBroker()
    outcome, _ = await HospitalIntake(broker, key_secret=SECRET, clock=lambda: NOW).accept(raw, "mllp:t")  # type: ignore[arg-type]
    assert (outcome.code, outcome.dead_lettered) == ("AE", True)
    assert broker.on(EVENTS.name) == []


def test_why_keyed_by_the_hospital_number_the_discharge_would_open_no_follow_up_the_resend_does() -> None:
    """The person on a caseload is known by their NHS number's key; the same discharge keyed by the hospital
    number alone (what accepting the bad number on it gave) is a ghost the rules engine opens no task for.
    The sender's corrected resend, keyed by their own NHS number, opens the discharge follow-up."""
    [resent] = map_message(the_walkthrough_message("W3", nhs_number=THEIRS), key_secret=SECRET)
    [ghost] = map_message(the_walkthrough_message("W4", nhs_number=None), key_secret=SECRET)
    assert ghost.person_key != resent.person_key  # the key would have changed under them
    on_caseload = month.episode("P1", month.at(1, 9), "c-ann")
    theirs = replace(on_caseload, subject=resent.person_key)
    assert tasks_opened_by(as_record_event(ghost), after=theirs) == []
    assert tasks_opened_by(as_record_event(resent), after=theirs) == ["discharge-follow-up"]
