"""HL7 v2 ADT -> FHIR: the rules a hospital integration team checks first, one per test."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from adapters.hl7v2.message import split_batch
from adapters.hl7v2.to_fhir import map_message
from hub.core.errors import InvalidMessageError, UnsupportedMessageError
from tests.builders import an_adt

NHS = "https://fhir.nhs.uk/Id/nhs-number"
SECRET = b"mapping-secret"


def resources(raw: bytes, kind: str) -> list[dict]:
    [event] = map_message(raw, key_secret=SECRET)
    return [e["resource"] for e in event.payload["entry"] if e["resource"]["resourceType"] == kind]


def test_nhs_number_comes_first_with_the_uk_core_system_and_verification_status() -> None:
    [patient] = resources(an_adt(trigger="A01"), "Patient")
    first = patient["identifier"][0]
    assert first["system"] == NHS
    assert first["value"] == "9434765919"
    assert first["extension"][0]["valueCodeableConcept"]["coding"][0]["code"] == "01"
    assert patient["identifier"][1] == {"system": "https://fhir.nhs.uk/Id/MRN/RXX", "value": "M100"}


def test_a_bad_nhs_number_is_invalid_at_pid_3_and_the_number_is_never_echoed() -> None:
    with pytest.raises(InvalidMessageError) as refused:
        map_message(an_adt(nhs_number="9434765910"), key_secret=SECRET)
    assert refused.value.expression == ("PID-3",)
    assert "9434765910" not in str(refused.value)
    assert "Modulus 11" in str(refused.value)


@pytest.mark.parametrize(
    ("local", "utc"),
    [
        ("202607011200", datetime(2026, 7, 1, 11, 0, tzinfo=UTC)),
        ("202601151200", datetime(2026, 1, 15, 12, 0, tzinfo=UTC)),
    ],
)
def test_time_stamps_without_an_offset_are_uk_local_time(local: str, utc: datetime) -> None:
    [event] = map_message(an_adt(trigger="A01", event_time=local), key_secret=SECRET)
    assert event.event_time == utc


def test_an_explicit_offset_is_respected() -> None:
    [event] = map_message(an_adt(trigger="A01", event_time="202607011200+0000"), key_secret=SECRET)
    assert event.event_time == datetime(2026, 7, 1, 12, 0, tzinfo=UTC)


def test_discharge_finishes_the_encounter_with_end_and_disposition() -> None:
    [encounter] = resources(an_adt(trigger="A03"), "Encounter")
    assert encounter["status"] == "finished"
    assert encounter["period"]["end"].startswith("2026-11-03T11:00")
    assert encounter["hospitalization"]["dischargeDisposition"]["coding"][0]["code"] == "19"
    assert encounter["class"]["code"] == "IMP"


@pytest.mark.parametrize(
    ("trigger", "status"),
    [("A01", "in-progress"), ("A02", "in-progress"), ("A11", "cancelled"), ("A13", "in-progress")],
)
def test_encounter_status_follows_the_trigger(trigger: str, status: str) -> None:
    [encounter] = resources(an_adt(trigger=trigger), "Encounter")
    assert encounter["status"] == status
    assert "end" not in encounter.get("period", {})


def test_the_registered_practice_becomes_an_organization_with_its_ods_code() -> None:
    raw = an_adt(practice="Y12345")
    [organization] = resources(raw, "Organization")
    [patient] = resources(raw, "Patient")
    assert organization["identifier"] == [{"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "Y12345"}]
    assert patient["generalPractitioner"] == [{"reference": f"Organization/{organization['id']}"}]


def test_the_person_key_is_stable_across_messages_and_is_not_the_nhs_number() -> None:
    [a] = map_message(an_adt(trigger="A01", control_id="1"), key_secret=SECRET)
    [b] = map_message(an_adt(trigger="A03", control_id="2", mrn="OTHER"), key_secret=SECRET)
    assert a.person_key == b.person_key
    assert "9434765919" not in a.person_key
    [c] = map_message(an_adt(trigger="A01", control_id="1"), key_secret=b"another-hub")
    assert c.person_key != a.person_key


def test_event_ids_are_stable_for_sender_and_control_id() -> None:
    [a] = map_message(an_adt(control_id="X1"), key_secret=SECRET)
    [b] = map_message(an_adt(control_id="X1"), key_secret=SECRET)
    [c] = map_message(an_adt(control_id="X1", sender="RYY"), key_secret=SECRET)
    assert a.event_id == b.event_id != c.event_id


def test_a40_links_the_survivor_and_the_retired_record() -> None:
    [event] = map_message(an_adt(trigger="A40", merged_mrn="OLD9"), key_secret=SECRET)
    patients = [e["resource"] for e in event.payload["entry"] if e["resource"]["resourceType"] == "Patient"]
    survivor, retired = patients[0], patients[-1]
    assert survivor["link"] == [{"other": {"reference": f"Patient/{retired['id']}"}, "type": "replaces"}]
    assert retired["active"] is False
    assert retired["link"][0]["type"] == "replaced-by"


@pytest.mark.parametrize("seg_end", [b"\r", b"\n", b"\r\n"])
def test_cr_lf_and_crlf_segment_endings_all_parse(seg_end: bytes) -> None:
    [encounter] = resources(an_adt(seg_end=seg_end), "Encounter")
    assert encounter["status"] == "finished"


def test_latin_1_names_decode_by_msh_18() -> None:
    raw = an_adt(family="JOSÉ", charset="8859/1", encoding="latin-1")
    [patient] = resources(raw, "Patient")
    assert patient["name"][0]["family"] == "JOSÉ"


def test_escape_sequences_are_unescaped_and_z_segments_ignored() -> None:
    raw = an_adt(family="O\\S\\BRIEN\\T\\CO", extra_segments=("ZU1|anything|at all",))
    [patient] = resources(raw, "Patient")
    assert patient["name"][0]["family"] == "O^BRIEN&CO"


def test_an_unsupported_trigger_names_msh_9() -> None:
    with pytest.raises(UnsupportedMessageError) as refused:
        map_message(an_adt(trigger="A24"), key_secret=SECRET)
    assert refused.value.expression == ("MSH-9.2",)


def test_a_missing_control_id_is_required() -> None:
    with pytest.raises(InvalidMessageError) as refused:
        map_message(an_adt(control_id=""), key_secret=SECRET)
    assert refused.value.expression == ("MSH-10",)
    assert refused.value.code == "required"


def test_a_discharge_without_pv1_is_invalid() -> None:
    raw = b"\r".join(s for s in an_adt(trigger="A03").split(b"\r") if not s.startswith(b"PV1"))
    with pytest.raises(InvalidMessageError) as refused:
        map_message(raw, key_secret=SECRET)
    assert refused.value.expression == ("PV1",)


def test_a_batch_file_splits_into_its_messages() -> None:
    one, two = an_adt(control_id="B1"), an_adt(control_id="B2")
    batch = b"FHS|^~\\&|PAS\rBHS|^~\\&|PAS\r" + one + two + b"BTS|2\rFTS|1\r"
    assert [m.split(b"|")[9] for m in split_batch(batch)] == [b"B1", b"B2"]
