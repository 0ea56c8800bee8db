"""HL7 v2 ADT -> FHIR: the rules a hospital integration team checks first, one per test."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from adapters.hl7v2.message import split_batch
from adapters.hl7v2.to_fhir import MappedEvent, map_message
from hub.core.errors import InvalidMessageError, UnsupportedMessageError
from schemas.events import encounter as enc
from schemas.events import patient as pat
from tests.builders import a_valid_nhs_number, an_adt

NHS = "https://fhir.nhs.uk/Id/nhs-number"
ODS = "https://fhir.nhs.uk/Id/ods-organization-code"
VERIFICATION_URL = "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-NHSNumberVerificationStatus"
VERIFICATION_SYSTEM = "https://fhir.hl7.org.uk/CodeSystem/UKCore-NHSNumberVerificationStatusEngland"
SECRET = b"mapping-secret"


def one_event(raw: bytes) -> MappedEvent:
    [event] = map_message(raw, key_secret=SECRET)
    return event


def resources(raw: bytes, kind: str) -> list[dict[str, Any]]:
    event = one_event(raw)
    return [e["resource"] for e in event.payload["entry"] if e["resource"]["resourceType"] == kind]


def refused(raw: bytes, kind: type[InvalidMessageError] = InvalidMessageError) -> InvalidMessageError:
    with pytest.raises(kind) as caught:
        map_message(raw, key_secret=SECRET)
    return caught.value


def as_trigger(raw: bytes, trigger: str) -> bytes:
    """The same message under another trigger event (keeps PV1-45, which the builder sets only for A03)."""
    return raw.replace(b"|ADT^A03^ADT_A03|", f"|ADT^{trigger}^ADT_A01|".encode()).replace(
        b"\rEVN|A03|", f"\rEVN|{trigger}|".encode()
    )


# --- identifiers -------------------------------------------------------------------------------


def test_nhs_number_comes_first_with_the_uk_core_system_and_verification_status() -> None:
    [patient] = resources(an_adt(trigger="A01"), "Patient")
    first = patient["identifier"][0]
    assert first["system"] == NHS
    assert first["value"] == "9434765919"
    assert first["extension"] == [
        {
            "url": VERIFICATION_URL,
            "valueCodeableConcept": {
                "coding": [{"system": VERIFICATION_SYSTEM, "code": "01", "display": "Number present and verified"}]
            },
        }
    ]
    assert patient["identifier"][1] == {"system": "https://fhir.nhs.uk/Id/MRN/RXX", "value": "M100"}


def test_nhs_number_is_first_even_when_the_sender_lists_it_after_the_mrn() -> None:
    raw = an_adt().replace(b"|9434765919^^^NHS^NH~M100^^^RXX^MR|", b"|M100^^^RXX^MR~9434765919^^^NHS^HN|")
    [patient] = resources(raw, "Patient")
    assert [i["system"] for i in patient["identifier"]] == [NHS, "https://fhir.nhs.uk/Id/MRN/RXX"]
    assert patient["identifier"][0]["value"] == "9434765919"


def test_nsts02_gives_verification_code_02() -> None:
    [patient] = resources(an_adt().replace(b"|NSTS01", b"|NSTS02"), "Patient")
    coding = patient["identifier"][0]["extension"][0]["valueCodeableConcept"]["coding"][0]
    assert (coding["code"], coding["display"]) == ("02", "Number present but not traced")


def test_no_pid_32_means_no_verification_extension() -> None:
    [patient] = resources(an_adt().replace(b"|NSTS01", b"|"), "Patient")
    assert "extension" not in patient["identifier"][0]


def test_without_an_nhs_number_the_mrn_is_the_only_identifier_and_no_extension_is_added() -> None:
    [patient] = resources(an_adt(nhs_number=None, mrn="LOCAL9"), "Patient")
    assert patient["identifier"] == [{"system": "https://fhir.nhs.uk/Id/MRN/RXX", "value": "LOCAL9"}]


def test_the_mrn_system_is_scoped_by_the_assigning_authority() -> None:
    raw = an_adt().replace(b"M100^^^RXX^MR", b"M100^^^RAB 01/X^MR")
    [patient] = resources(raw, "Patient")
    assert patient["identifier"][1] == {"system": "https://fhir.nhs.uk/Id/MRN/RAB_01_X", "value": "M100"}


def test_an_mrn_without_an_authority_is_scoped_by_the_sender() -> None:
    raw = an_adt(sender="RYY").replace(b"M100^^^RYY^MR", b"M100")
    [patient] = resources(raw, "Patient")
    assert patient["identifier"][1] == {"system": "https://fhir.nhs.uk/Id/MRN/RYY", "value": "M100"}


def test_an_nhs_number_in_3_3_4_form_is_normalised() -> None:
    [patient] = resources(an_adt(nhs_number="943 476 5919"), "Patient")
    assert patient["identifier"][0]["value"] == "9434765919"


@pytest.mark.parametrize(
    ("number", "why"),
    [
        ("9434765910", "fails the Modulus 11 check"),
        ("9135246570", "no check digit is possible"),
        ("943476591", "must be 10 digits"),
        ("94347659199", "must be 10 digits"),
        ("94347A5919", "must be 10 digits"),
    ],
)
def test_a_bad_nhs_number_is_invalid_at_pid_3_and_the_number_is_never_echoed(number: str, why: str) -> None:
    error = refused(an_adt(nhs_number=number))  # (beside the hospital number M100: refused all the same)
    assert type(error) is InvalidMessageError
    assert error.expression == ("PID-3",)
    assert error.code == "value"
    assert why in error.diagnostics
    for text in (str(error), repr(error), error.diagnostics, *error.args):
        assert number not in text


def test_a_bad_nhs_number_in_the_merged_record_names_mrg_1() -> None:
    raw = an_adt(trigger="A40").replace(b"MRG|OLD1^^^RXX^MR", b"MRG|9434765910^^^NHS^NH")
    error = refused(raw)
    assert error.expression == ("MRG-1",)
    assert "9434765910" not in str(error)


def test_a_repeated_identical_nhs_number_is_kept_once() -> None:
    [patient] = resources(an_adt(mrn="9434765919^^^NHS"), "Patient")
    assert [i["value"] for i in patient["identifier"] if i["system"] == NHS] == ["9434765919"]


def test_two_different_nhs_numbers_for_one_patient_are_invalid() -> None:
    error = refused(an_adt(mrn="9990500002^^^NHS"))
    assert error.expression == ("PID-3",)
    assert "9990500002" not in str(error) and "9434765919" not in str(error)


def test_a_patient_without_any_identifier_value_is_required_at_pid_3() -> None:
    error = refused(an_adt(nhs_number=None, mrn=None))
    assert (error.expression, error.code) == (("PID-3",), "required")


# --- person key and event ids ------------------------------------------------------------------


def test_the_person_key_is_stable_across_messages_and_is_not_the_nhs_number() -> None:
    a = one_event(an_adt(trigger="A01", control_id="1"))
    b = one_event(an_adt(trigger="A03", control_id="2", mrn="OTHER", sender="RYY"))
    assert a.person_key == b.person_key
    assert len(a.person_key) == 32
    assert "9434765919" not in a.person_key
    [patient] = resources(an_adt(trigger="A01", control_id="1"), "Patient")
    assert patient["id"] == a.person_key
    c = map_message(an_adt(trigger="A01", control_id="1"), key_secret=b"another-hub")[0]
    assert c.person_key != a.person_key


def test_different_nhs_numbers_give_different_person_keys() -> None:
    other = a_valid_nhs_number()
    assert one_event(an_adt(nhs_number=other)).person_key != one_event(an_adt()).person_key


def test_without_an_nhs_number_the_key_comes_from_the_scoped_mrn() -> None:
    a = one_event(an_adt(nhs_number=None, mrn="L1", control_id="1"))
    b = one_event(an_adt(nhs_number=None, mrn="L1", control_id="2"))
    c = one_event(an_adt(nhs_number=None, mrn="L1", sender="RYY"))
    assert a.person_key == b.person_key != c.person_key
    assert a.person_key != one_event(an_adt()).person_key


def test_a_resend_of_the_same_message_keeps_its_event_id_whatever_its_line_endings_or_msh_7() -> None:
    first = one_event(an_adt(control_id="X1"))
    assert one_event(an_adt(control_id="X1")).event_id == first.event_id
    assert one_event(an_adt(control_id="X1", seg_end=b"\r\n")).event_id == first.event_id
    restamped = an_adt(control_id="X1").replace(b"|202611031105||ADT^", b"|202611031107||ADT^")  # MSH-7 only
    assert restamped != an_adt(control_id="X1")
    assert one_event(restamped).event_id == first.event_id
    assert (first.control_id, first.sender, first.source) == ("X1", "RXX", "urn:ods:RXX")


def test_a_different_message_under_a_reused_control_id_gets_its_own_event_id() -> None:
    first = one_event(an_adt(control_id="X1"))
    others = [
        one_event(an_adt(control_id="X1", family="OTHER")),
        one_event(an_adt(control_id="X1", nhs_number=a_valid_nhs_number(), visit="V2")),
        one_event(an_adt(control_id="X1", trigger="A01")),
        one_event(an_adt(control_id="X1", sender="RYY")),
        one_event(an_adt(control_id="X2")),
    ]
    assert len({first.event_id, *(e.event_id for e in others)}) == 6
    assert {e.control_id for e in others[:-1]} == {"X1"}


def test_a_stay_named_by_nothing_is_the_messages_own_never_anothers_under_a_reused_control_id() -> None:
    def stay(nhs_number: str) -> str:
        raw = an_adt(trigger="A01", control_id="X1", visit=None, admit=None, nhs_number=nhs_number)
        [encounter] = resources(raw, "Encounter")
        return str(encounter["id"])

    assert stay("9434765919") == stay("9434765919")
    assert stay("9434765919") != stay(a_valid_nhs_number())


# --- time --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("local", "utc", "offset"),
    [
        ("202607011200", datetime(2026, 7, 1, 11, 0, tzinfo=UTC), "+01:00"),  # BST
        ("202601151200", datetime(2026, 1, 15, 12, 0, tzinfo=UTC), "+00:00"),  # GMT
    ],
    ids=["summer", "winter"],
)
def test_time_stamps_without_an_offset_are_uk_local_time(local: str, utc: datetime, offset: str) -> None:
    event = one_event(an_adt(trigger="A03", event_time=local, admit=local, discharge=local))
    assert event.event_time == utc
    assert event.event_time.tzinfo == UTC
    [encounter] = [e["resource"] for e in event.payload["entry"] if e["resource"]["resourceType"] == "Encounter"]
    assert encounter["period"]["start"] == f"{local[:4]}-{local[4:6]}-{local[6:8]}T12:00:00{offset}"
    assert datetime.fromisoformat(encounter["period"]["end"]) == utc


def test_the_clocks_going_back_hour_is_read_as_the_first_bst_pass() -> None:
    event = one_event(an_adt(event_time="202610250130"))  # 01:30 happens twice on 25 Oct 2026
    assert event.event_time == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)


def test_an_explicit_offset_is_respected() -> None:
    assert one_event(an_adt(event_time="202607011200+0000")).event_time == datetime(2026, 7, 1, 12, tzinfo=UTC)
    assert one_event(an_adt(event_time="202601151200-0500")).event_time == datetime(2026, 1, 15, 17, tzinfo=UTC)


def test_evn_2_wins_over_msh_7_and_msh_7_is_the_fallback() -> None:
    raw = an_adt(event_time="202601151200")
    with_evn = raw.replace(b"EVN|A03|202601151200", b"EVN|A03|202601151000")
    assert one_event(with_evn).event_time == datetime(2026, 1, 15, 10, tzinfo=UTC)
    without_evn = raw.replace(b"EVN|A03|202601151200", b"EVN|A03|")
    assert one_event(without_evn).event_time == datetime(2026, 1, 15, 12, tzinfo=UTC)


@pytest.mark.parametrize(
    ("stamp", "place"),
    [("20261301", "EVN-2"), ("2026110", "EVN-2"), ("yesterday", "EVN-2"), ("202611031105+2500", "EVN-2")],
)
def test_a_bad_event_time_names_the_field(stamp: str, place: str) -> None:
    error = refused(an_adt(event_time=stamp))
    assert (error.expression, error.code) == ((place,), "value")


@pytest.mark.parametrize("stamp", ["99991231235959-2359", "00010101000000+2359"])
def test_an_offset_that_leaves_the_representable_range_is_invalid_not_a_crash(stamp: str) -> None:
    assert refused(an_adt(event_time=stamp)).expression == ("EVN-2",)


def test_a_bad_admit_time_names_pv1_44() -> None:
    assert refused(an_adt(admit="202611319999")).expression == ("PV1-44",)
    assert refused(an_adt(admit="202611010930+9900")).expression == ("PV1-44",)


@pytest.mark.parametrize("trigger", ["A03", "A08"])
def test_a_discharge_before_its_admission_is_invalid_at_pv1_45(trigger: str) -> None:
    raw = as_trigger(an_adt(admit="202611031000", discharge="202611030959"), trigger)
    error = refused(raw)
    assert (error.expression, error.code) == (("PV1-45",), "value")
    assert error.diagnostics == "PV1-45 (discharge time) 202611030959 is before PV1-44 (admission time) 202611031000"


@pytest.mark.parametrize(
    ("admit", "discharge"),
    [("202611031000", "202611031000"), ("202611031000", "20261103"), ("202611031000+0000", "2026110311+0100")],
    ids=["the-same-minute", "a-day-alone", "offsets"],
)
def test_a_discharge_at_or_in_the_same_period_as_the_admission_is_not_before_it(admit: str, discharge: str) -> None:
    assert resources(an_adt(admit=admit, discharge=discharge), "Encounter")[0]["status"] == "finished"


def test_a_cancelled_discharges_pv1_45_is_not_held_to_the_admission_time() -> None:
    raw = as_trigger(an_adt(admit="20130211100152", discharge="201302111000"), "A13")  # as Epic sends
    assert resources(raw, "Encounter")[0]["status"] == "in-progress"


NOW = datetime(2026, 11, 25, 9, 30, tzinfo=UTC)  # 09:30 GMT, so UK local time stamps read the same


@pytest.mark.parametrize(
    ("changes", "place"),
    [
        ({"admit": "209911010930", "trigger": "A01"}, "PV1-44"),
        ({"discharge": "209911031100"}, "PV1-45"),
        ({"event_time": "209911031105"}, "EVN-2"),
        ({"admit": "202611250936"}, "PV1-44"),  # six minutes ahead: past the five allowed for skew
    ],
    ids=["admission", "discharge", "event", "just-past-the-skew"],
)
def test_a_time_in_the_future_is_invalid_naming_its_field(changes: dict[str, str], place: str) -> None:
    with pytest.raises(InvalidMessageError) as caught:
        map_message(an_adt(**changes), key_secret=SECRET, now=NOW)  # type: ignore[arg-type]
    assert (caught.value.expression, caught.value.code) == ((place,), "value")
    assert (
        "in the future" in caught.value.diagnostics and "5 minutes allowed for clock skew" in caught.value.diagnostics
    )


def test_msh_7_in_the_future_is_named_when_there_is_no_evn_2() -> None:
    raw = an_adt(event_time="209911031105").replace(b"EVN|A03|209911031105", b"EVN|A03|")
    with pytest.raises(InvalidMessageError) as caught:
        map_message(raw, key_secret=SECRET, now=NOW)
    assert caught.value.expression == ("MSH-7",)


def _with_pid(born: str, died: str = "") -> bytes:
    """The builder's ADT with PID-7 (and PID-29) as given."""
    raw = an_adt().replace(b"||19400312|F|", f"||{born}|F|".encode())
    if died:
        segments = raw.split(b"\r")
        pid = next(i for i, s in enumerate(segments) if s.startswith(b"PID|"))
        fields = segments[pid].split(b"|")
        fields += [b""] * (30 - len(fields))
        fields[29] = died.encode()
        segments[pid] = b"|".join(fields)
        raw = b"\r".join(segments)
    return raw


@pytest.mark.parametrize(
    ("born", "died", "place", "said"),
    [
        ("20261126", "", "PID-7", "PID-7 (date of birth) 20261126 is in the future"),
        ("2027", "", "PID-7", "PID-7 (date of birth) 2027 is in the future"),
        ("19400312", "209901010000", "PID-29", "PID-29 (date of death) 2099-01-01T00:00:00+00:00 is in the future"),
        ("19400312", "193901010000", "PID-29", "PID-29 (date of death) 1939-01-01T00:00:00+00:00 is before PID-7"),
        ("1940", "193912311200", "PID-29", "is before PID-7 (date of birth) 1940"),
    ],
    ids=["born-tomorrow", "born-next-year", "dies-in-2099", "dies-before-birth", "dies-before-a-year-of-birth"],
)
def test_a_birth_or_death_that_cannot_have_happened_is_invalid_naming_its_field(
    born: str, died: str, place: str, said: str
) -> None:
    with pytest.raises(InvalidMessageError) as caught:
        map_message(_with_pid(born, died), key_secret=SECRET, now=NOW)
    assert (caught.value.expression, caught.value.code) == ((place,), "value")
    assert said in caught.value.diagnostics


def test_a_birth_today_and_a_death_in_the_year_of_birth_are_accepted() -> None:
    [patient] = [
        e["resource"]
        for e in map_message(_with_pid("20261125", ""), key_secret=SECRET, now=NOW)[0].payload["entry"]
        if e["resource"]["resourceType"] == "Patient"
    ]
    assert patient["birthDate"] == "2026-11-25"
    [event] = map_message(_with_pid("1940", "194006011200"), key_secret=SECRET, now=NOW)
    [patient] = [e["resource"] for e in event.payload["entry"] if e["resource"]["resourceType"] == "Patient"]
    assert (patient["birthDate"], patient["deceasedDateTime"][:10]) == ("1940", "1940-06-01")
    [event] = map_message(_with_pid("202611240630", "20261124"), key_secret=SECRET, now=NOW)  # a neonatal death
    [patient] = [e["resource"] for e in event.payload["entry"] if e["resource"]["resourceType"] == "Patient"]
    assert (patient["birthDate"], patient["deceasedDateTime"][:10]) == ("2026-11-24", "2026-11-24")


def test_a_sender_clock_a_few_minutes_fast_is_tolerated() -> None:
    raw = an_adt(admit="202611250934", discharge="202611250934", event_time="202611250934")
    [event] = map_message(raw, key_secret=SECRET, now=NOW)
    assert event.event_time == datetime(2026, 11, 25, 9, 34, tzinfo=UTC)


# --- encounters by trigger ---------------------------------------------------------------------


def test_discharge_finishes_the_encounter_with_end_and_disposition() -> None:
    event = one_event(an_adt(trigger="A03"))
    assert event.event_type == enc.ENCOUNTER_DISCHARGED.type
    [encounter] = [e["resource"] for e in event.payload["entry"] if e["resource"]["resourceType"] == "Encounter"]
    assert encounter["status"] == "finished"
    assert encounter["period"] == {"start": "2026-11-01T09:30:00+00:00", "end": "2026-11-03T11:00:00+00:00"}
    assert encounter["hospitalization"]["dischargeDisposition"] == {
        "coding": [{"system": "https://fhir.hl7.org.uk/CodeSystem/UKCore-DischargeDestinationEngland", "code": "19"}],
        "text": "19",
    }
    assert encounter["class"] == {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"}
    assert encounter["subject"] == {"reference": f"Patient/{event.person_key}"}
    assert encounter["serviceProvider"] == {"identifier": {"system": ODS, "value": "RXX"}}
    assert encounter["identifier"][0]["value"] == "V1"
    assert encounter["location"] == [{"location": {"display": "WARD1 BAY2 BED3"}}]


def test_a_free_text_discharge_disposition_is_kept_as_text_only() -> None:
    raw = an_adt().replace(b"|||19|||", b"|||Home|||")
    [encounter] = resources(raw, "Encounter")
    assert encounter["hospitalization"]["dischargeDisposition"] == {"text": "Home"}


def test_admission_is_in_progress_without_an_end() -> None:
    event = one_event(an_adt(trigger="A01"))
    assert event.event_type == enc.ENCOUNTER_ADMITTED.type
    [encounter] = [e["resource"] for e in event.payload["entry"] if e["resource"]["resourceType"] == "Encounter"]
    assert encounter["status"] == "in-progress"
    assert encounter["period"] == {"start": "2026-11-01T09:30:00+00:00"}


def test_a_cancelled_admission_is_cancelled() -> None:
    event = one_event(an_adt(trigger="A11"))
    assert event.event_type == enc.ADMISSION_CANCELLED.type
    [encounter] = [e["resource"] for e in event.payload["entry"] if e["resource"]["resourceType"] == "Encounter"]
    assert encounter["status"] == "cancelled"


def test_a_cancelled_discharge_is_in_progress_and_drops_the_end_even_if_pv1_45_is_sent() -> None:
    raw = as_trigger(an_adt(trigger="A03"), "A13")
    assert b"|202611031100" in raw  # PV1-45 still there
    event = one_event(raw)
    assert event.event_type == enc.DISCHARGE_CANCELLED.type
    [encounter] = [e["resource"] for e in event.payload["entry"] if e["resource"]["resourceType"] == "Encounter"]
    assert encounter["status"] == "in-progress"
    assert encounter["period"] == {"start": "2026-11-01T09:30:00+00:00"}


def test_a_transfer_is_in_progress() -> None:
    event = one_event(an_adt(trigger="A02"))
    assert event.event_type == enc.ENCOUNTER_TRANSFERRED.type
    assert resources(an_adt(trigger="A02"), "Encounter")[0]["status"] == "in-progress"


def test_an_update_is_patient_updated_and_its_encounter_status_follows_pv1_45() -> None:
    event = one_event(an_adt(trigger="A08"))
    assert event.event_type == pat.PATIENT_UPDATED.type
    [encounter] = resources(an_adt(trigger="A08"), "Encounter")
    assert encounter["status"] == "unknown"
    [finished] = resources(as_trigger(an_adt(trigger="A03"), "A08"), "Encounter")
    assert finished["status"] == "finished"
    assert finished["period"]["end"] == "2026-11-03T11:00:00+00:00"


@pytest.mark.parametrize("trigger", ["A28", "A31"])
def test_person_administration_events_carry_no_encounter(trigger: str) -> None:
    event = one_event(an_adt(trigger=trigger))
    assert event.event_type == pat.PATIENT_UPDATED.type
    assert {e["resource"]["resourceType"] for e in event.payload["entry"]} == {"Patient", "Organization"}


@pytest.mark.parametrize(
    ("patient_class", "system", "code"),
    [
        ("E", "http://terminology.hl7.org/CodeSystem/v3-ActCode", "EMER"),
        ("I", "http://terminology.hl7.org/CodeSystem/v3-ActCode", "IMP"),
        ("O", "http://terminology.hl7.org/CodeSystem/v3-ActCode", "AMB"),
        ("P", "http://terminology.hl7.org/CodeSystem/v3-ActCode", "PRENC"),
        ("W", "http://terminology.hl7.org/CodeSystem/v2-0004", "W"),
        ("", "http://terminology.hl7.org/CodeSystem/v2-0004", "U"),
    ],
)
def test_patient_class_maps_to_encounter_class(patient_class: str, system: str, code: str) -> None:
    [encounter] = resources(an_adt(trigger="A01", patient_class=patient_class), "Encounter")
    assert encounter["class"] == {"system": system, "code": code}


def test_the_same_visit_gives_the_same_encounter_id_across_admit_and_discharge() -> None:
    [admitted] = resources(an_adt(trigger="A01", control_id="1"), "Encounter")
    [discharged] = resources(an_adt(trigger="A03", control_id="2"), "Encounter")
    [other] = resources(an_adt(trigger="A03", control_id="3", visit="V2"), "Encounter")
    assert admitted["id"] == discharged["id"] != other["id"]


def test_a_discharge_without_pv1_is_invalid() -> None:
    raw = b"\r".join(s for s in an_adt(trigger="A03").split(b"\r") if not s.startswith(b"PV1"))
    error = refused(raw)
    assert (error.expression, error.code) == (("PV1",), "required")


# --- the bundle and the patient ----------------------------------------------------------------


def test_the_payload_is_a_collection_bundle_of_patient_organization_encounter() -> None:
    event = one_event(an_adt(trigger="A03", event_time="202611031105"))
    bundle = event.payload
    assert bundle["resourceType"] == "Bundle"
    assert bundle["type"] == "collection"
    assert bundle["timestamp"] == "2026-11-03T11:05:00+00:00"
    assert [e["resource"]["resourceType"] for e in bundle["entry"]] == ["Patient", "Organization", "Encounter"]


def test_demographics_are_mapped() -> None:
    [patient] = resources(an_adt(), "Patient")
    assert patient["name"] == [{"use": "official", "family": "SMITH", "given": ["JANE"], "prefix": ["MRS"]}]
    assert patient["birthDate"] == "1940-03-12"
    assert patient["gender"] == "female"
    assert patient["address"] == [{"line": ["1 HIGH STREET"], "city": "MALTON", "postalCode": "YO17 7AA"}]


def test_a_date_of_death_makes_the_patient_deceased() -> None:
    raw = an_adt().replace(b"|||||||||||||||||||||NSTS01", b"||||||||||||||||||202611030200|Y||NSTS01")
    [patient] = resources(raw, "Patient")
    assert patient["deceasedDateTime"] == "2026-11-03T02:00:00+00:00"


@pytest.mark.parametrize(
    ("born", "expected"), [("1940", "1940"), ("194003", "1940-03"), ("194003121015", "1940-03-12")]
)
def test_birth_dates_keep_their_precision(born: str, expected: str) -> None:
    [patient] = resources(an_adt().replace(b"|19400312|", f"|{born}|".encode()), "Patient")
    assert patient["birthDate"] == expected


@pytest.mark.parametrize("born", ["19401312", "19400230", "19400001", "1940031X"])
def test_an_impossible_birth_date_is_invalid_naming_pid_7(born: str) -> None:
    error = refused(an_adt().replace(b"|19400312|", f"|{born}|".encode()))
    assert type(error) is InvalidMessageError
    assert (error.expression, error.code) == (("PID-7",), "value")


def test_the_registered_practice_becomes_an_organization_with_its_ods_code() -> None:
    raw = an_adt(practice="Y12345")
    [organization] = resources(raw, "Organization")
    [patient] = resources(raw, "Patient")
    assert organization["identifier"] == [{"system": ODS, "value": "Y12345"}]
    assert organization["name"] == "MALTON SURGERY"
    assert patient["generalPractitioner"] == [{"reference": f"Organization/{organization['id']}"}]
    [again] = resources(an_adt(practice="Y12345", control_id="OTHER", trigger="A01"), "Organization")
    assert again["id"] == organization["id"]


def test_no_pd1_means_no_organization_and_no_general_practitioner() -> None:
    raw = an_adt(practice=None)
    assert resources(raw, "Organization") == []
    assert "generalPractitioner" not in resources(raw, "Patient")[0]


# --- merges ------------------------------------------------------------------------------------


def test_a40_links_the_survivor_and_the_retired_record() -> None:
    event = one_event(an_adt(trigger="A40", merged_mrn="OLD9"))
    assert event.event_type == pat.PATIENT_MERGED.type
    patients = [e["resource"] for e in event.payload["entry"] if e["resource"]["resourceType"] == "Patient"]
    assert len(patients) == 2
    survivor, retired = patients
    assert survivor["id"] == event.person_key
    assert survivor["identifier"][0]["value"] == "9434765919"
    assert survivor["link"] == [{"other": {"reference": f"Patient/{retired['id']}"}, "type": "replaces"}]
    assert retired["active"] is False
    assert retired["identifier"] == [{"system": "https://fhir.nhs.uk/Id/MRN/RXX", "value": "OLD9"}]
    assert retired["link"] == [{"other": {"reference": f"Patient/{survivor['id']}"}, "type": "replaced-by"}]
    assert retired["id"] == one_event(an_adt(nhs_number=None, mrn="OLD9")).person_key


def test_a40_with_two_pid_mrg_pairs_gives_two_events_with_distinct_ids() -> None:
    raw = an_adt(trigger="A40", merged_mrn="OLD1") + b"PID|2||M200^^^RXX^MR\rMRG|OLD2^^^RXX^MR\r"
    first, second = map_message(raw, key_secret=SECRET)
    assert first.event_id != second.event_id
    assert first.control_id == second.control_id == "MSG0001"
    assert first.person_key != second.person_key
    assert one_event(an_adt(trigger="A40")).event_id not in {first.event_id, second.event_id}  # keyed with #n
    again = map_message(raw, key_secret=SECRET)
    assert [e.event_id for e in again] == [first.event_id, second.event_id]


def test_a40_without_mrg_is_required_at_mrg_1() -> None:
    raw = b"\r".join(s for s in an_adt(trigger="A40").split(b"\r") if not s.startswith(b"MRG"))
    assert refused(raw).expression == ("MRG-1",)


def test_a40_merging_a_record_into_itself_is_invalid() -> None:
    raw = an_adt(trigger="A40", nhs_number=None, mrn="SAME", merged_mrn="SAME")
    error = refused(raw)
    assert error.expression == ("MRG-1",)


# --- what is refused ---------------------------------------------------------------------------


@pytest.mark.parametrize("trigger", ["A24", "A05", "A06", "A15", ""])
def test_an_unsupported_trigger_is_refused_at_msh_9_2(trigger: str) -> None:
    error = refused(an_adt(trigger=trigger), UnsupportedMessageError)
    assert (error.expression, error.code) == (("MSH-9.2",), "not-supported")


def test_another_message_type_is_refused_at_msh_9() -> None:
    raw = an_adt().replace(b"|ADT^A03^ADT_A03|", b"|ORU^R01^ORU_R01|")
    assert refused(raw, UnsupportedMessageError).expression == ("MSH-9",)


def test_hl7_v3_is_refused_at_msh_12() -> None:
    assert refused(an_adt(version="3.0"), UnsupportedMessageError).expression == ("MSH-12",)


def test_a_missing_control_id_is_required() -> None:
    error = refused(an_adt(control_id=""))
    assert (error.expression, error.code) == (("MSH-10",), "required")


def test_a_missing_sender_is_required_at_msh_4() -> None:
    raw = an_adt().replace(b"MSH|^~\\&|PAS|RXX|", b"MSH|^~\\&|||")
    error = refused(raw)
    assert (error.expression, error.code) == (("MSH-4",), "required")


def test_msh_3_stands_in_for_an_empty_msh_4() -> None:
    raw = an_adt().replace(b"MSH|^~\\&|PAS|RXX|", b"MSH|^~\\&|PAS||")
    assert one_event(raw).sender == "PAS"


def test_a_missing_message_time_is_required_at_msh_7() -> None:
    raw = an_adt().replace(b"|202611031105||ADT", b"|||ADT").replace(b"EVN|A03|202611031105", b"EVN|A03|")
    assert refused(raw).expression == ("MSH-7",)


# --- encodings through the whole mapping ------------------------------------------------------


@pytest.mark.parametrize("seg_end", [b"\r", b"\n", b"\r\n"], ids=["CR", "LF", "CRLF"])
def test_cr_lf_and_crlf_segment_endings_all_map_the_same(seg_end: bytes) -> None:
    assert one_event(an_adt(seg_end=seg_end)).payload == one_event(an_adt()).payload


def test_latin_1_names_decode_by_msh_18() -> None:
    raw = an_adt(family="JOSÉ", charset="8859/1", encoding="latin-1")
    [patient] = resources(raw, "Patient")
    assert patient["name"][0]["family"] == "JOSÉ"


def test_escape_sequences_are_unescaped_and_z_segments_ignored() -> None:
    raw = an_adt(family="O\\S\\BRIEN\\T\\CO", extra_segments=("ZU1|anything|at all",))
    [patient] = resources(raw, "Patient")
    assert patient["name"][0]["family"] == "O^BRIEN&CO"
    assert one_event(raw).payload["entry"][1:] == one_event(an_adt(family="O\\S\\BRIEN\\T\\CO")).payload["entry"][1:]


def test_quoted_nulls_do_not_become_values() -> None:
    raw = an_adt(given='""').replace(b"|F|||", b'|""|||')
    [patient] = resources(raw, "Patient")
    assert patient["name"] == [{"use": "official", "family": "SMITH", "prefix": ["MRS"]}]
    assert "gender" not in patient


def test_a_batch_file_splits_into_its_messages() -> None:
    one, two = an_adt(control_id="B1"), an_adt(control_id="B2")
    batch = b"FHS|^~\\&|PAS\rBHS|^~\\&|PAS\r" + one + two + b"BTS|2\rFTS|1\r"
    events = [one_event(m) for m in split_batch(batch)]
    assert [e.control_id for e in events] == ["B1", "B2"]


# --- what trusts' feeds sent (defects found over MLLP) -----------------------------------------

DESTINATION = "https://fhir.hl7.org.uk/CodeSystem/UKCore-DischargeDestinationEngland"
DISCHARGE_METHOD = "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-DischargeMethod"


@pytest.mark.parametrize(
    ("died", "indicator", "deceased"),
    [
        ("", "N", {"deceasedBoolean": False}),
        ("", "n", {"deceasedBoolean": False}),
        ("", "Y", {"deceasedBoolean": True}),
        ("", "", {}),
        ("20261202103000", "Y", {"deceasedDateTime": "2026-12-02T10:30:00+00:00"}),
        # contradictory: the date wins, as the v2-to-FHIR IG maps PID-30 only where PID-29 is empty
        ("20261202103000", "N", {"deceasedDateTime": "2026-12-02T10:30:00+00:00"}),
    ],
)
def test_pid_30_n_says_the_person_is_not_deceased_and_a_date_of_death_outweighs_it(
    died: str, indicator: str, deceased: dict[str, object]
) -> None:
    [patient] = resources(an_adt(trigger="A08", died=died, death_indicator=indicator), "Patient")
    assert {k: v for k, v in patient.items() if k.startswith("deceased")} == deceased


def test_pid_32_as_the_explicit_null_asks_the_record_to_delete_the_verification_status() -> None:
    [patient] = resources(an_adt(trigger="A08", reliability='""'), "Patient")
    assert "extension" not in patient["identifier"][0]
    assert patient["extension"] == [
        {
            "url": "https://carehub.invalid/StructureDefinition/removed-element",
            "valueCode": "identifier:nhsNumber.extension:nhsNumberVerificationStatus",
        }
    ]


@pytest.mark.parametrize(
    ("pd1_3", "ods"),
    [
        ("DERWENT PRACTICE^^^^^^^^^Y90001", "Y90001"),  # v2.5 on: XON-10, XON-3 deprecated
        ("DERWENT PRACTICE^^Y00001^^^^^^^Y90001", "Y90001"),  # both: XON-10 wins
        ("DERWENT PRACTICE^^Y00001", "Y00001"),  # ITK v2.4: XON-3
    ],
)
def test_the_practice_ods_code_is_xon_10_where_valued_else_xon_3(pd1_3: str, ods: str) -> None:
    raw = an_adt(trigger="A01", version="2.5.1").replace(b"PD1|||MALTON SURGERY^^Y00001|", f"PD1|||{pd1_3}|".encode())
    [organization] = resources(raw, "Organization")
    [patient] = resources(raw, "Patient")
    assert organization["identifier"] == [{"system": ODS, "value": ods}]
    assert organization["name"] == "DERWENT PRACTICE"
    assert patient["generalPractitioner"] == [{"reference": f"Organization/{organization['id']}"}]


def test_pv1_37_is_the_discharge_destination_and_pv1_36_is_kept_as_sent_beside_it() -> None:
    [encounter] = resources(an_adt(trigger="A03", disposition="1", discharged_to="54"), "Encounter")
    assert encounter["hospitalization"] == {
        "dischargeDisposition": {"coding": [{"system": DESTINATION, "code": "54"}], "text": "54"}
    }
    assert encounter["extension"] == [{"url": DISCHARGE_METHOD, "valueCodeableConcept": {"text": "1"}}]


@pytest.mark.parametrize(
    ("pv1_36", "pv1_37", "hospitalization"),
    [
        ("", "85", {"dischargeDisposition": {"coding": [{"system": DESTINATION, "code": "85"}], "text": "85"}}),
        ("", "CARE HOME", {"dischargeDisposition": {"text": "CARE HOME"}}),
        ("19", "", {"dischargeDisposition": {"coding": [{"system": DESTINATION, "code": "19"}], "text": "19"}}),
        # Epic (UCLH): free text in PV1-36, a local code in PV1-37: PV1-36 stays the disposition
        ("Home", "1", {"dischargeDisposition": {"text": "Home"}, "destination": {"display": "1"}}),
    ],
)
def test_the_discharge_destination_comes_from_whichever_field_carries_it(
    pv1_36: str, pv1_37: str, hospitalization: dict[str, object]
) -> None:
    [encounter] = resources(an_adt(trigger="A03", disposition=pv1_36, discharged_to=pv1_37), "Encounter")
    assert encounter["hospitalization"] == hospitalization
    assert "extension" not in encounter


def test_xpn_7_name_types_become_name_uses_by_the_v2_to_fhir_concept_map() -> None:
    raw = an_adt().replace(b"|SMITH^JANE^^^MRS|", b"|SMITH^JOHN^PAUL^^MR^^L~SMYTHE^JACK^^^^^A|")
    [patient] = resources(raw, "Patient")
    assert patient["name"] == [
        {"use": "official", "family": "SMITH", "given": ["JOHN", "PAUL"], "prefix": ["MR"]},
        {"family": "SMYTHE", "given": ["JACK"]},  # A (alias, or assigned from v2.5): unmatched in the IG
    ]


@pytest.mark.parametrize(
    ("name_type", "use"),
    [("D", "usual"), ("M", "maiden"), ("BAD", "old"), ("N", "nickname"), ("R", "official"), ("TEMP", "temp")],
)
def test_each_mapped_name_type_has_its_use(name_type: str, use: str) -> None:
    raw = an_adt().replace(b"|SMITH^JANE^^^MRS|", f"|SMITH^JANE^^^MRS^^{name_type}|".encode())
    assert resources(raw, "Patient")[0]["name"][0]["use"] == use
