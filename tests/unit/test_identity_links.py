"""Identity links (hub.core.identity_links): a hospital-number-only Patient and the same person's Patient
with a verified NHS number naming that number are linked by a merge, found in either order; never on an
unverified number, another hospital's number, a Patient merged away already, or a number two people hold."""

from __future__ import annotations

from typing import Any

import pytest

from adapters.hl7v2.to_fhir import map_message
from hub.core.coordination import tick
from hub.core.identity import person_key
from hub.core.identity_links import identity_links, verified_nhs_number
from hub.core.ports import RecordEvent
from hub.core.record import apply_events
from hub.core.record_content import NHS_NUMBER_SYSTEM as NHS
from hub.core.record_content import VERIFICATION_URL
from hub.store.memory import MemoryRecordStore
from schemas.events.patient import PATIENT_MERGED
from tests.builders import an_adt

SECRET = b"identity-links-secret"
GOOD, OTHER = "9434765919", "9990000018"
MRN_KEY = person_key(SECRET, None, ("RXX", "M100"))
NHS_KEY = person_key(SECRET, GOOD, None)


def events(raw: bytes) -> list[RecordEvent]:
    return [
        RecordEvent(m.event_id, m.event_type, m.source, m.event_time, m.person_key, m.payload)
        for m in map_message(raw, key_secret=SECRET)
    ]


def ed_admission(**kwargs: Any) -> list[RecordEvent]:
    """An A01 from ED: the hospital number alone (no NHS number yet)."""
    said = {"control_id": "A1", "event_time": "202611010930", "nhs_number": None, "mrn": "M100"} | kwargs
    return events(an_adt(trigger="A01", discharge=None, **said))


def traced(**kwargs: Any) -> list[RecordEvent]:
    """An A08 after a PDS trace: the NHS number (verified unless said otherwise) and the same number."""
    said = {"control_id": "U1", "event_time": "202611011200", "mrn": "M100"} | kwargs
    return events(an_adt(trigger="A08", nhs_number=said.pop("nhs_number", GOOD), **said))


def links_after(store: MemoryRecordStore, *batches: list[RecordEvent]) -> list[RecordEvent]:
    """Apply each batch in turn (its own transaction, as the record consumer does); the links the last shows."""
    found: list[RecordEvent] = []
    for batch in batches:
        with store.unit_of_work() as uow:
            apply_events(uow, batch)
            found = identity_links(uow, SECRET, batch)
            uow.commit()
    return found


@pytest.mark.parametrize("order", ["hospital number first", "nhs number first"])
def test_a_verified_nhs_number_beside_the_hospital_number_links_the_two_as_a_merge(order: str) -> None:
    store = MemoryRecordStore()
    first, second = (ed_admission(), traced()) if order == "hospital number first" else (traced(), ed_admission())
    [link] = links_after(store, first, second)

    assert (link.type, link.subject) == (PATIENT_MERGED.type, NHS_KEY)
    [retired] = [e["resource"] for e in link.payload["entry"]]
    assert retired["id"] == MRN_KEY and retired["active"] is False
    assert retired["link"] == [{"other": {"reference": f"Patient/{NHS_KEY}"}, "type": "replaced-by"}]
    assert link.source == "urn:ods:RXX" and link.time == traced()[0].time  # the later of the two Patients

    links_after(store, [link])  # applied as an A40 is: one person, the stay theirs
    reader = store.reader()
    assert reader.filed_under([MRN_KEY, NHS_KEY]) == {MRN_KEY: NHS_KEY, NHS_KEY: NHS_KEY}
    assert {e["subject"]["reference"] for e in reader.search("Encounter", NHS_KEY)} == {f"Patient/{NHS_KEY}"}
    assert reader.search("Encounter", MRN_KEY) == []
    assert links_after(store, traced(control_id="U2", event_time="202611021200"), ed_admission(control_id="A2")) == []


def test_either_order_gives_the_same_event_so_finding_it_twice_is_harmless() -> None:
    one, other = MemoryRecordStore(), MemoryRecordStore()
    [a] = links_after(one, ed_admission(), traced())
    [b] = links_after(other, traced(), ed_admission())
    assert (a.id, a.type, a.source, a.time, a.subject, a.payload) == (
        b.id,
        b.type,
        b.source,
        b.time,
        b.subject,
        b.payload,
    )
    with one.unit_of_work() as uow:
        assert apply_events(uow, [a, b]).duplicates == 1


def test_both_patients_in_one_batch_are_linked_once_whatever_else_it_holds() -> None:
    batch = [tick(0, traced()[0].time), *ed_admission(), *traced(), *traced(control_id="U2")]
    assert len(links_after(MemoryRecordStore(), batch)) == 1


def status(system: str, code: str) -> dict[str, Any]:
    coding = {"system": system, "code": code}
    return {"url": VERIFICATION_URL, "valueCodeableConcept": {"coding": [coding]}}


ENGLAND = "https://fhir.hl7.org.uk/CodeSystem/UKCore-NHSNumberVerificationStatusEngland"
CARE_CONNECT = "https://fhir.hl7.org.uk/STU3/CodeSystem/CareConnect-NHSNumberVerificationStatus-1"


@pytest.mark.parametrize(
    ("extension", "verified"),
    [
        (status(ENGLAND, "01"), True),
        (status(CARE_CONNECT, "01"), True),
        (status(ENGLAND, "02"), False),
        (status("https://example.org/not-the-nhs-code-system", "01"), False),
        ({"url": "https://example.org/another-extension", "valueCode": "01"}, False),
    ],
)
def test_only_status_01_of_the_nhs_code_systems_is_a_verified_number(extension: dict[str, Any], verified: bool) -> None:
    patient = {"identifier": [{"system": NHS, "value": GOOD, "extension": [extension]}]}
    assert verified_nhs_number(patient) == (GOOD if verified else None)


@pytest.mark.parametrize("reliability", ["NSTS02", "NSTS03", ""], ids=["not traced", "trace required", "no status"])
@pytest.mark.parametrize("order", ["hospital number first", "nhs number first"])
def test_an_nhs_number_not_verified_links_no_one(reliability: str, order: str) -> None:
    store = MemoryRecordStore()
    said = traced(reliability=reliability)
    first, second = (ed_admission(), said) if order == "hospital number first" else (said, ed_admission())
    assert links_after(store, first, second) == []


@pytest.mark.parametrize("order", ["hospital number first", "nhs number first"])
def test_the_same_number_from_another_hospital_is_another_person(order: str) -> None:
    store = MemoryRecordStore()
    elsewhere = ed_admission(sender="RYY")  # M100 of RYY, not of RXX
    first, second = (elsewhere, traced()) if order == "hospital number first" else (traced(), elsewhere)
    assert links_after(store, first, second) == []


def test_a_hospital_number_merged_away_already_is_not_linked_again() -> None:
    store = MemoryRecordStore()
    a40 = events(an_adt(trigger="A40", nhs_number=None, mrn="M200", merged_mrn="M100", control_id="M1",
                        event_time="202611011000"))  # fmt: skip
    assert links_after(store, ed_admission(), a40, traced()) == []


def test_a_hospital_number_two_nhs_numbers_claim_links_neither() -> None:
    store = MemoryRecordStore()
    claimed = traced(nhs_number=OTHER, control_id="U0", family="JONES")
    assert links_after(store, claimed, traced(), ed_admission()) == []
    assert links_after(MemoryRecordStore(), ed_admission(), [*claimed, *traced()]) == []


def test_two_nhs_numbered_patients_are_never_linked() -> None:
    store = MemoryRecordStore()
    assert links_after(store, traced(nhs_number=OTHER, mrn="M300"), traced(mrn="M300", control_id="U2")) == []
