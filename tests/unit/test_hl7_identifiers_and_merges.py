"""PID-3 / MRG-1 identifiers: an NHS number is known by its identifier type (CX-5 `NH`) as well as by
its assigning authority (CX-4 `NHS`), and an A40 of two hospital numbers of one person (one NHS number)
is that person updated, never a merge of a person into themselves (review findings 4 and 5)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from adapters.hl7v2.service import HospitalIntake
from adapters.hl7v2.to_fhir import MappedEvent, map_message
from hub.core.errors import InvalidMessageError
from hub.core.ports import RecordEvent
from hub.core.record import apply_events
from hub.store.memory import MemoryRecordStore
from schemas.events import patient as pat
from schemas.topics import DEAD_LETTER
from tests.builders import an_adt
from tests.fakes import RecordingBroker

SECRET = b"identifiers-secret"
NHS = "https://fhir.nhs.uk/Id/nhs-number"
MRN = "https://fhir.nhs.uk/Id/MRN/"
NHS_OID = "2.16.840.1.113883.2.1.4.1"  # the NHS number's OID, sent by some PAS as CX-4
GOOD = "9434765919"
NOW = datetime(2026, 12, 7, 9, 30, tzinfo=UTC)


def with_pid_3(pid_3: str, **kwargs: Any) -> bytes:
    """An A01 whose PID-3 is exactly `pid_3`."""
    raw = an_adt(trigger="A01", nhs_number=GOOD, mrn=None, **kwargs)
    return raw.replace(f"PID|1||{GOOD}^^^NHS^NH|".encode(), f"PID|1||{pid_3}|".encode())


def an_a40(pid_3: str, mrg_1: str, *, control_id: str = "M5", event_time: str = "202612061200") -> bytes:
    """An A40 from RZZ with PID-3 and MRG-1 exactly as given (the shape of /tmp/rev-hl7/repro/4-*.hl7)."""
    raw = an_adt(trigger="A40", sender="RZZ", nhs_number=GOOD, mrn=None, control_id=control_id, event_time=event_time)
    raw = raw.replace(f"PID|1||{GOOD}^^^NHS^NH|".encode(), f"PID|1||{pid_3}|".encode())
    return raw.replace(b"MRG|OLD1^^^RZZ^MR", f"MRG|{mrg_1}".encode())


def one_event(raw: bytes) -> MappedEvent:
    [event] = map_message(raw, key_secret=SECRET)
    return event


def patients(event: MappedEvent) -> list[dict[str, Any]]:
    return [e["resource"] for e in event.payload["entry"] if e["resource"]["resourceType"] == "Patient"]


def identifiers(event: MappedEvent) -> list[tuple[str, str]]:
    [patient] = patients(event)
    return [(i["system"], i["value"]) for i in patient["identifier"]]


def refused(raw: bytes) -> InvalidMessageError:
    with pytest.raises(InvalidMessageError) as caught:
        map_message(raw, key_secret=SECRET)
    return caught.value


def key_of_nhs_number(number: str = GOOD) -> str:
    return one_event(with_pid_3(f"{number}^^^NHS^NH")).person_key


# --- finding 5: CX-5 `NH` is an NHS number whatever CX-4 says ------------------------------------


@pytest.mark.parametrize(
    "pid_3",
    [
        f"{GOOD}^^^{NHS_OID}^NH",
        f"{GOOD}^^^^NH",
        f"{GOOD}^^^RZZ^NH",
        f"{GOOD}^^^{NHS_OID}^nh",
        f"H1^^^RZZ^MR~{GOOD}^^^{NHS_OID}^NH",
    ],
    ids=["nhs-number-oid", "no-authority", "local-authority", "lower-case-type", "after-an-mrn"],
)
def test_an_nhs_number_typed_nh_under_any_authority_is_the_nhs_number_and_keys_the_person(pid_3: str) -> None:
    event = one_event(with_pid_3(pid_3))
    assert identifiers(event)[0] == (NHS, GOOD)
    assert event.person_key == key_of_nhs_number()  # one person, however the sender labels the number
    assert all(system != MRN + NHS_OID for system, _ in identifiers(event))


@pytest.mark.parametrize("authority", [NHS_OID, "", "RZZ"])
def test_an_nhs_number_typed_nh_that_fails_modulus_11_is_refused_naming_pid_3(authority: str) -> None:
    error = refused(with_pid_3(f"9990040002^^^{authority}^NH"))  # the review's repro number: fails the check
    assert (error.expression, error.code) == (("PID-3",), "value")
    assert "Modulus 11" in error.diagnostics


def test_an_nhs_number_typed_nh_of_the_wrong_length_is_refused_naming_pid_3() -> None:
    error = refused(with_pid_3(f"943476591^^^{NHS_OID}^NH"))
    assert (error.expression, "10 digits" in error.diagnostics) == (("PID-3",), True)


def test_a_placeholder_typed_nh_beside_a_hospital_number_is_left_out_and_the_person_known_by_that_number() -> None:
    event = one_event(with_pid_3(f"0000000000^^^{NHS_OID}^NH~H7^^^RZZ^MR"))
    assert identifiers(event) == [(MRN + "RZZ", "H7")]
    assert event.person_key == one_event(with_pid_3("H7^^^RZZ^MR")).person_key


def test_a_placeholder_typed_nh_alone_is_refused_naming_pid_3() -> None:
    error = refused(with_pid_3("9999999999^^^^NH"))
    assert error.expression == ("PID-3",)
    assert "placeholder" in error.diagnostics


def test_two_different_nhs_numbers_one_typed_nh_one_under_authority_nhs_are_refused() -> None:
    error = refused(with_pid_3(f"{GOOD}^^^NHS^NH~9990400008^^^{NHS_OID}^NH"))
    assert error.expression == ("PID-3",)
    assert "two different NHS numbers" in error.diagnostics


def test_the_same_nhs_number_under_authority_nhs_and_typed_nh_is_kept_once() -> None:
    event = one_event(with_pid_3(f"{GOOD}^^^NHS^NH~{GOOD}^^^{NHS_OID}^NH~H1^^^RZZ^MR"))
    assert identifiers(event) == [(NHS, GOOD), (MRN + "RZZ", "H1")]


@pytest.mark.parametrize("cx_5", ["MR", "PI", ""])
def test_a_hospital_number_not_typed_nh_is_unchanged_and_its_digits_never_checked(cx_5: str) -> None:
    event = one_event(with_pid_3(f"1234567891^^^RZZ^{cx_5}"))  # ten digits failing Modulus 11: not an NHS number
    assert identifiers(event) == [(MRN + "RZZ", "1234567891")]
    assert event.person_key == one_event(with_pid_3("1234567891^^^RZZ^MR")).person_key


@pytest.mark.parametrize("cx_5", ["NH", "MR", ""])
def test_authority_nhs_is_the_nhs_number_whatever_cx_5_says_as_before(cx_5: str) -> None:
    event = one_event(with_pid_3(f"{GOOD}^^^NHS^{cx_5}"))
    assert identifiers(event) == [(NHS, GOOD)]
    assert refused(with_pid_3(f"9990040002^^^NHS^{cx_5}")).expression == ("PID-3",)


def test_a_retired_nhs_number_typed_nh_in_mrg_1_is_checked_and_refusal_names_mrg_1() -> None:
    error = refused(an_a40("H901^^^RZZ^MR", f"9990040002^^^{NHS_OID}^NH"))
    assert error.expression == ("MRG-1",)
    assert "Modulus 11" in error.diagnostics


# --- finding 4: an A40 of two hospital numbers that share one NHS number -------------------------

SAME_NHS_A40 = an_a40("9990400008^^^NHS^NH~H901^^^RZZ^MR", "H902^^^RZZ^MR~9990400008^^^NHS^NH")


def test_an_a40_of_two_hospital_numbers_of_one_nhs_number_is_an_update_of_that_person_not_a_merge() -> None:
    event = one_event(SAME_NHS_A40)
    assert event.event_type == pat.PATIENT_UPDATED.type
    assert event.person_key == key_of_nhs_number("9990400008")
    [patient] = patients(event)  # no retired Patient: the person is not merged into themselves
    assert patient["id"] == event.person_key
    assert "link" not in patient and patient.get("active") is not False
    assert patient["identifier"][:2] == [
        {"system": NHS, "value": "9990400008", "extension": patient["identifier"][0]["extension"]},
        {"system": MRN + "RZZ", "value": "H901"},
    ]
    assert patient["identifier"][2:] == [{"system": MRN + "RZZ", "value": "H902", "use": "old"}]
    assert patient["name"][0]["family"] == "SMITH"  # what the message says of the person is applied
    assert [e["resource"]["resourceType"] for e in event.payload["entry"]] == ["Patient", "Organization"]


def test_the_same_a40_with_the_nhs_number_typed_nh_under_the_oid_is_an_update_too() -> None:
    raw = an_a40("9990400008^^^NHS^NH~H901^^^RZZ^MR", f"H902^^^RZZ^MR~9990400008^^^{NHS_OID}^NH")
    event = one_event(raw)
    assert (event.event_type, event.person_key) == (pat.PATIENT_UPDATED.type, key_of_nhs_number("9990400008"))


def test_an_a40_of_one_person_is_the_same_event_on_a_resend() -> None:
    assert one_event(SAME_NHS_A40).event_id == one_event(SAME_NHS_A40).event_id


def test_an_a40_whose_mrg_1_names_only_the_survivors_own_identifiers_is_still_refused_at_mrg_1() -> None:
    raw = an_a40("9990400008^^^NHS^NH~H901^^^RZZ^MR", "H901^^^RZZ^MR~9990400008^^^NHS^NH")
    error = refused(raw)
    assert (error.expression, error.diagnostics) == (("MRG-1",), "MRG-1 names the surviving record itself")


def test_an_a40_of_two_people_is_still_a_merge() -> None:
    event = one_event(an_a40("9990400008^^^NHS^NH~H901^^^RZZ^MR", "H902^^^RZZ^MR"))
    assert event.event_type == pat.PATIENT_MERGED.type
    survivor, retired = patients(event)
    assert retired["active"] is False and retired["identifier"] == [{"system": MRN + "RZZ", "value": "H902"}]
    assert all(i.get("use") != "old" for i in survivor["identifier"])


def test_an_a40_with_one_pair_of_one_person_and_one_of_two_people_gives_an_update_and_a_merge() -> None:
    raw = SAME_NHS_A40 + b"PID|2||H300^^^RZZ^MR\rMRG|H301^^^RZZ^MR\r"
    update, merge = map_message(raw, key_secret=SECRET)
    assert (update.event_type, merge.event_type) == (pat.PATIENT_UPDATED.type, pat.PATIENT_MERGED.type)
    assert update.event_id != merge.event_id


def as_record_events(raw: bytes) -> list[RecordEvent]:
    return [
        RecordEvent(id=m.event_id, type=m.event_type, source=m.source, time=m.event_time, subject=m.person_key,
                    payload=m.payload)
        for m in map_message(raw, key_secret=SECRET)
    ]  # fmt: skip


def test_the_record_keeps_one_active_patient_found_by_either_hospital_number_after_the_a40() -> None:
    store = MemoryRecordStore()
    admitted = with_pid_3("9990400008^^^NHS^NH~H902^^^RZZ^MR", sender="RZZ", control_id="A1", event_time="202612051000")
    with store.unit_of_work() as uow:
        apply_events(uow, [*as_record_events(admitted), *as_record_events(SAME_NHS_A40)])
        uow.commit()
    reader = store.reader()
    key = key_of_nhs_number("9990400008")
    for value in ("H901", "H902"):
        [found] = reader.patients_by_identifier(MRN + "RZZ", value)
        assert found["id"] == key and found.get("active") is not False and "link" not in found
    assert reader.filed_under([key]) == {key: key}


async def test_the_review_repro_a40_is_answered_aa_and_nothing_is_dead_lettered() -> None:
    broker = RecordingBroker()
    hub = HospitalIntake(broker, key_secret=SECRET, clock=lambda: NOW)  # type: ignore[arg-type]
    outcome, reply = await hub.accept(SAME_NHS_A40, "mllp:test")
    msa = next(s for s in reply.decode().split("\r") if s.startswith("MSA")).split("|")
    assert (outcome.code, msa[1], msa[2]) == ("AA", "AA", "M5")
    assert broker.on(DEAD_LETTER.name) == []
