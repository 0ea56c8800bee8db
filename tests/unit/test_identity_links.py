"""Identity links (hub.core.identity_links): a hospital-number-only Patient and the same person's Patient
with a verified NHS number naming that number are linked by a merge, found in either order; never on an
unverified number, another hospital's number, a Patient merged away already, or a number two people hold."""

from __future__ import annotations

import re
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


def test_two_nhs_numbered_patients_are_never_linked_to_each_other() -> None:
    store = MemoryRecordStore()
    assert links_after(store, traced(nhs_number=OTHER, mrn="M300"), traced(mrn="M300", control_id="U2")) == []


# -- review 97: what links and what does not ------------------------------------------------------


def with_pid(raw: bytes, born: str = "19400312", sex: str = "F") -> bytes:
    """The message with PID-7 (birth date) and PID-8 (sex) as given ("" leaves them empty)."""
    return raw.replace(b"||19400312|F|||", f"||{born}|{sex}|||".encode())


def ed(raw_kwargs: dict[str, Any] | None = None, **pid: str) -> list[RecordEvent]:
    said = {"trigger": "A01", "discharge": None, "control_id": "A1", "event_time": "202611010930"}
    said |= {"nhs_number": None, "mrn": "M100"} | (raw_kwargs or {})
    return events(with_pid(an_adt(**said), **pid))


def both_orders(first: list[RecordEvent], second: list[RecordEvent]) -> list[list[RecordEvent]]:
    """The links found applying the two in each order (a fresh record each)."""
    return [links_after(MemoryRecordStore(), first, second), links_after(MemoryRecordStore(), second, first)]


@pytest.mark.parametrize(
    ("ed_pid", "ed_name"),
    [
        ({"born": "19900101"}, {}),
        ({"born": "1940"}, {}),  # (1940 is as far as it goes, and agrees: see the next test) ...
        ({"born": ""}, {}),
        ({"sex": "M"}, {}),
        ({}, {"family": "JONES"}),
    ],
    ids=["birth date differs", "control", "no birth date", "gender differs", "family name differs"],
)
def test_demographics_that_disagree_link_no_one_in_either_order(
    ed_pid: dict[str, str], ed_name: dict[str, str]
) -> None:
    found = both_orders(ed(ed_name, **ed_pid), traced())
    if ed_pid == {"born": "1940"}:  # the control: a birth date given to the year agrees with 1940-03-12
        assert [len(f) for f in found] == [1, 1]
    else:
        assert found == [[], []]


def test_no_birth_date_on_either_side_links_no_one() -> None:
    assert both_orders(ed(born=""), events(with_pid(an_adt(trigger="A08", control_id="U1", visit=None), born=""))) == [
        [],
        [],
    ]


def test_a_claimant_merged_away_is_not_linked_to() -> None:
    # OTHER claimed M100, then was merged (an A40 by NHS number) into GOOD, whose Patient does not name
    # M100: the hospital number is not linked to the retired key (nor, in doubt, to GOOD)
    claimed = traced(nhs_number=OTHER, control_id="U9")
    patient = {**claimed[0].payload["entry"][0]["resource"], "active": False}
    patient["link"] = [{"other": {"reference": f"Patient/{NHS_KEY}"}, "type": "replaced-by"}]
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": patient}]}
    a40 = RecordEvent("m-1", PATIENT_MERGED.type, "urn:ods:RXX", claimed[0].time, NHS_KEY, bundle)
    gp = events(an_adt(trigger="A08", mrn=None, control_id="U1", visit=None))  # GOOD, no hospital number
    for batches in ((gp, claimed, [a40], ed_admission()), (ed_admission(), gp, claimed, [a40])):
        store = MemoryRecordStore()
        assert links_after(store, *batches) == []
        assert store.reader().filed_under([MRN_KEY]) == {MRN_KEY: MRN_KEY}


def test_names_compare_without_case_spaces_or_hyphens_and_unknown_sex_says_nothing() -> None:
    mine = ed({"family": "smith - jones"}, sex="U")
    assert [len(f) for f in both_orders(mine, traced(family="SMITH-JONES"))] == [1, 1]


def test_an_ed_patient_of_another_age_and_sex_is_not_merged_and_keeps_its_death() -> None:
    raw = an_adt(trigger="A03", nhs_number=None, mrn="M100", control_id="A1", event_time="202611010930",
                 family="JONES", given="PETER", died="202611010900")  # fmt: skip
    store = MemoryRecordStore()
    assert links_after(store, events(with_pid(raw, "19900101", "M")), traced()) == []
    held = store.reader().read("Patient", NHS_KEY) or {}
    assert "deceasedDateTime" not in held and held["birthDate"] == "1940-03-12"


def claimed_by(sender: str, authority: str, nhs_number: str = OTHER) -> list[RecordEvent]:
    """An A08 from `sender` naming M100 with `authority` as its assigning authority (CX-4)."""
    raw = an_adt(trigger="A08", nhs_number=nhs_number, mrn="M100", sender=sender, control_id="Y2",
                 event_time="202611011300", visit=None)  # fmt: skip
    return events(raw.replace(f"M100^^^{sender}^MR".encode(), f"M100^^^{authority}^MR".encode()))


def test_only_the_hospital_that_issued_a_number_can_claim_it() -> None:
    assert both_orders(ed_admission(), claimed_by("RYY", "RXX")) == [[], []]
    # the issuer's own claim, its authority spelt in another case, is its own (D10)
    assert [len(f) for f in both_orders(ed_admission(), claimed_by("RXX", "rxx", GOOD))] == [1, 1]


def test_a_second_nhs_number_claiming_the_number_blocks_the_link_in_every_order_verified_or_not() -> None:
    unverified = traced(nhs_number=OTHER, control_id="U9", family="SMITH", reliability="NSTS02")
    for batches in ((unverified, traced(), ed_admission()), (ed_admission(), [*unverified, *traced()])):
        assert links_after(MemoryRecordStore(), *batches) == []
    assert links_after(MemoryRecordStore(), traced(), unverified, ed_admission()) == []


def test_a_number_linked_already_is_not_linked_again_when_another_nhs_number_claims_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from consumers.record import apply_and_link

    store = MemoryRecordStore()
    [link] = links_after(store, ed_admission(), traced())
    links_after(store, [link])
    published: list[RecordEvent] = []
    with caplog.at_level("WARNING", logger="consumers.record"):
        apply_and_link(store.unit_of_work, traced(nhs_number=OTHER, control_id="U9"), SECRET, published.extend)
    assert published == []
    assert store.reader().filed_under([MRN_KEY]) == {MRN_KEY: NHS_KEY}  # not unlinked either
    [warning] = [r for r in caplog.records if r.levelname == "WARNING"]
    other_key = person_key(SECRET, OTHER, None)
    said = warning.getMessage()
    assert {MRN_KEY, NHS_KEY, other_key} <= set(re.findall(r"\b[0-9a-f]{32}\b", said))
    assert not [word for word in (GOOD, OTHER, "M100", "SMITH", "JANE") if word.casefold() in said.casefold()]


def test_a_patient_with_an_nhs_number_of_its_own_is_never_retired() -> None:
    # a Patient the record holds under the hospital number's key that has an NHS number (verified) of
    # its own, and no longer the hospital number: two NHS numbers, never one person by a hospital number
    [own] = events(an_adt(trigger="A08", nhs_number=OTHER, mrn=None, control_id="O1", visit=None))
    patient = {**own.payload["entry"][0]["resource"], "id": MRN_KEY}
    bundle = {**own.payload, "entry": [{"resource": patient}]}
    keyed = RecordEvent(own.id, own.type, own.source, own.time, MRN_KEY, bundle)
    assert links_after(MemoryRecordStore(), [keyed], traced()) == []
    assert links_after(MemoryRecordStore(), traced(), [keyed]) == []
    # and naming the hospital number too, alone or beside another claim: it is a claimant, never retired
    patient["identifier"] = [*patient["identifier"], {"system": "https://fhir.nhs.uk/Id/MRN/RXX", "value": "M100"}]
    assert links_after(MemoryRecordStore(), [keyed]) == []
    assert both_orders([keyed], traced()) == [[], []]


def test_a_patient_keyed_by_another_hospital_number_is_not_retired_by_a_claim_on_its_second() -> None:
    raw = an_adt(trigger="A01", nhs_number=None, mrn="M200", control_id="A1", event_time="202611010930", discharge=None)
    second = events(raw.replace(b"M200^^^RXX^MR", b"M200^^^RXX^MR~M100^^^RXX^MR"))  # keyed by M200, naming M100
    assert both_orders(second, traced()) == [[], []]


def test_the_link_is_the_issuing_hospitals_whoever_wrote_the_hospital_number_last() -> None:
    # RYY names RXX's number alone (keyed as RXX's): the link is still RXX's, as found in the other order
    elsewhere = claimed_by("RYY", "RXX", nhs_number="")
    [a] = links_after(MemoryRecordStore(), ed_admission(), elsewhere, traced())
    [b] = links_after(MemoryRecordStore(), elsewhere, traced(), ed_admission())
    assert a.source == b.source == "urn:ods:RXX"


class OneAtATime:
    """A unit of work offering the port alone (no BatchedLookups): asked one look-up at a time."""

    def __init__(self, uow: Any) -> None:
        self.uow = uow

    def get(self, resource_type: str, id: str) -> Any:
        return self.uow.get(resource_type, id)

    def find_by_identifier(self, resource_type: str, system: str, value: str) -> Any:
        return self.uow.find_by_identifier(resource_type, system, value)


@pytest.mark.parametrize("order", ["hospital number first", "nhs number first"])
def test_a_unit_of_work_without_batched_look_ups_finds_the_same_links(order: str) -> None:
    store = MemoryRecordStore()
    first, second = (ed_admission(), traced()) if order == "hospital number first" else (traced(), ed_admission())
    links_after(store, first)
    with store.unit_of_work() as uow:
        apply_events(uow, second)
        assert identity_links(OneAtATime(uow), SECRET, second) == identity_links(uow, SECRET, second)  # type: ignore[arg-type]
        assert len(identity_links(uow, SECRET, second)) == 1
