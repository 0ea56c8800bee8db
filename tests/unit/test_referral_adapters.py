"""The referrals adapter: register rows and referrals -> FHIR events, every validation rule, hostile input."""

from __future__ import annotations

import json
import logging
import random
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.referrals.rows import Format, Row, detect, read_rows
from adapters.referrals.service import ACCEPTED, NOT_SENT, REJECTED, ReferralIntake
from adapters.referrals.to_fhir import (
    CARE_ACT_SYSTEM,
    LOCAL_AUTHORITY_SYSTEM,
    MappedEvent,
    map_row,
)
from hub.core.errors import HubError, InvalidMessageError, UnsupportedMessageError
from hub.core.identity import person_key
from hub.core.nhs_number import check_digit
from hub.core.ports import RecordEvent
from hub.core.record import apply_events
from hub.store.memory import MemoryRecordStore
from schemas.envelope import Envelope
from schemas.events import coordination as co
from schemas.events.coordination import OUTCOME_EXTENSION
from schemas.events.rejected import INPUT_REJECTED, ORIGIN_HEADER, OUTCOME_HEADER
from schemas.topics import DEAD_LETTER, EVENTS

SECRET = b"test-secret"
NHS = "9434765919"
OTHER_NHS = "9990000018"
EXAMPLES = Path(__file__).resolve().parents[2] / "adapters" / "referrals" / "examples"
REGISTER_HEADER = (
    "nhs_number,practice_ods,non_elective_admissions_12m,long_term_conditions,frailty,birth_date,extracted_on"
)
ASC_HEADER = "referral_id,nhs_number,birth_date,gp_practice_ods,referred_on,referrer,addressed_to,reason"
NOW = datetime(2026, 11, 25, tzinfo=UTC)  # when the tests' files are read
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def register_row(**changes: str) -> dict[str, str]:
    row = {
        "nhs_number": NHS,
        "practice_ods": "Y90001",
        "non_elective_admissions_12m": "2",
        "long_term_conditions": "3",
        "frailty": "moderate",
        "birth_date": "1938-02-01",
        "extracted_on": "2026-11-02",
    }
    return row | changes


def asc_referral(**changes: Any) -> dict[str, Any]:
    doc = {
        "referral_id": "ASC-1",
        "nhs_number": NHS,
        "birth_date": "1938-02-01",
        "gp_practice_ods": "Y90001",
        "referred_on": "2026-11-03",
        "referrer": "E10000023",
        "addressed_to": "Y0PIC",
        "reason": "Lives alone after a fall",
    }
    return doc | changes


def vcse_referral(**changes: Any) -> dict[str, Any]:
    doc = {
        "referral_id": "VCS-1",
        "nhs_number": NHS,
        "gp_practice_ods": "Y90001",
        "referred_on": "2026-11-06",
        "referrer": "VCS001",
        "referrer_name": "Example Age Concern",
        "addressed_to": "Y0PIC",
        "needs": ["social-isolation"],
    }
    return doc | changes


def outcome(**changes: Any) -> dict[str, Any]:
    doc = {"referral_id": "VCS-1", "referrer": "VCS001", "nhs_number": NHS, "outcome": "contacted", "on": "2026-11-12"}
    return doc | changes


def csv_of(rows: list[dict[str, str]], header: str = REGISTER_HEADER) -> bytes:
    names = header.split(",")
    lines = [header] + [",".join(r.get(n, "") for n in names) for r in rows]
    return ("\n".join(lines) + "\n").encode()


def map_file(raw: bytes, fmt: Format, **kw: Any) -> list[MappedEvent | InvalidMessageError]:
    results: list[MappedEvent | InvalidMessageError] = []
    for row in read_rows(raw, fmt):
        try:
            results.append(map_row(fmt, row, key_secret=SECRET, **({"now": NOW} | kw)))
        except InvalidMessageError as error:
            results.append(error)
    return results


def one(fmt: Format, values: dict[str, Any], **kw: Any) -> MappedEvent:
    return map_row(fmt, Row(2, values, b""), key_secret=SECRET, **({"now": NOW} | kw))


def rejection(fmt: Format, values: dict[str, Any], **kw: Any) -> str:
    with pytest.raises(InvalidMessageError) as caught:
        one(fmt, values, **kw)
    return caught.value.diagnostics


def resources(event: MappedEvent, kind: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in event.payload["entry"] if e["resource"]["resourceType"] == kind]


def coded(resource: dict[str, Any], path: str = "code") -> str:
    return str(resource[path]["coding"][0]["code"])


def a_valid_nhs_number(rng: random.Random) -> str:
    while True:
        nine = "999" + "".join(str(rng.randrange(10)) for _ in range(6))
        digit = check_digit(nine)
        if digit is not None:
            return nine + str(digit)


# --- register rows ---------------------------------------------------------------------------------


def test_register_row_is_one_event_with_a_patient_stub_and_three_observations() -> None:
    event = one(Format.REGISTER, register_row())
    key = person_key(SECRET, NHS, None)
    assert event.event_type == co.REGISTER_ROW.type
    assert (event.person_key, event.sender, event.source) == (key, "Y90001", "urn:ods:Y90001")
    assert event.event_time == datetime(2026, 11, 2, tzinfo=UTC)
    (patient,) = resources(event, "Patient")
    assert patient == {
        "resourceType": "Patient",
        "id": key,
        "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": NHS}],
        "birthDate": "1938-02-01",
        "generalPractitioner": [
            {"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "Y90001"}}
        ],
    }
    observations = {coded(o): o for o in resources(event, "Observation")}
    assert set(observations) == {"non-elective-admissions-12m", "long-term-conditions", "frailty"}
    for obs in observations.values():
        assert obs["code"]["coding"][0]["system"] == co.MEASURE_SYSTEM
        assert obs["subject"] == {"reference": f"Patient/{key}"}
        assert obs["effectiveDateTime"] == "2026-11-02"
        assert obs["performer"][0]["identifier"]["value"] == "Y90001"
        assert obs["status"] == "final"
    assert observations["non-elective-admissions-12m"]["valueInteger"] == 2
    assert observations["long-term-conditions"]["valueInteger"] == 3
    frailty = observations["frailty"]["valueCodeableConcept"]["coding"][0]
    assert (frailty["system"], frailty["code"]) == (co.SNOMED, co.FRAILTY["moderate"])


@pytest.mark.parametrize("level", ["mild", "moderate", "severe", "MILD"])
def test_frailty_categories_are_coded_in_snomed(level: str) -> None:
    event = one(Format.REGISTER, register_row(frailty=level))
    (frailty,) = [o for o in resources(event, "Observation") if coded(o) == "frailty"]
    assert frailty["valueCodeableConcept"]["coding"][0]["code"] == co.FRAILTY[level.lower()]


def test_no_frailty_is_said_in_text_for_want_of_a_code() -> None:
    event = one(Format.REGISTER, register_row(frailty="none"))
    (frailty,) = [o for o in resources(event, "Observation") if coded(o) == "frailty"]
    assert frailty["valueCodeableConcept"] == {"text": "none"}


def test_the_extraction_date_may_come_from_the_file_and_the_row_wins() -> None:
    given_day = date(2026, 10, 1)
    assert one(Format.REGISTER, register_row(extracted_on=""), extracted_on=given_day).event_time == datetime(
        2026, 9, 30, 23, tzinfo=UTC
    )  # 1 Oct, BST
    assert one(Format.REGISTER, register_row(), extracted_on=given_day).event_time.date() == date(2026, 11, 2)
    reason = rejection(Format.REGISTER, register_row(extracted_on=""))
    assert reason.startswith("row 2, field extracted_on: is required")


def test_register_rows_need_no_birth_date() -> None:
    event = one(Format.REGISTER, register_row(birth_date=""))
    assert "birthDate" not in resources(event, "Patient")[0]


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("nhs_number", "9434765918", "field nhs_number: fails the Modulus 11 check"),
        ("nhs_number", "943476591", "field nhs_number: must be 10 digits"),
        ("nhs_number", "94347659１9", "field nhs_number: must be 10 digits"),
        ("nhs_number", "", "field nhs_number: is required"),
        ("practice_ods", "12345", "field practice_ods: '12345' is not a GP practice ODS code"),
        ("practice_ods", "RXX", "field practice_ods: 'RXX' is not a GP practice ODS code"),
        ("non_elective_admissions_12m", "-1", "field non_elective_admissions_12m: '-1' is not a whole number"),
        ("non_elective_admissions_12m", "2.5", "is not a whole number of 0 or more"),
        ("non_elective_admissions_12m", "two", "is not a whole number of 0 or more"),
        ("non_elective_admissions_12m", "٣", "is not a whole number of 0 or more"),
        ("long_term_conditions", "", "field long_term_conditions: is required"),
        ("long_term_conditions", "9999999999", "field long_term_conditions: 9999999999 is too large"),
        ("frailty", "very", "field frailty: 'very' is not one of none, mild, moderate, severe"),
        ("birth_date", "01/02/1938", "field birth_date: '01/02/1938' is not an ISO 8601 date"),
        # as Excel shows dates in the UK: named, with the date it would be, but never taken as one
        ("birth_date", "17/12/1950", "(DD/MM/YYYY, 1950-12-17 as ISO 8601); format the column as yyyy-mm-dd"),
        ("nhs_number", "9.43477E+09", "field nhs_number: is a number Excel has shown in scientific notation"),
        ("birth_date", "19380201", "is not an ISO 8601 date"),
        ("birth_date", "1938-02-30", "field birth_date: '1938-02-30' is not a real date"),
        ("birth_date", "1899-12-31", "is before 1900"),
        ("birth_date", "2026-11-03", "field birth_date: is after extracted_on"),
        ("extracted_on", "2026-13-01", "field extracted_on: '2026-13-01' is not a real date"),
        ("extracted_on", "2026-11-02T10:00", "field extracted_on: '2026-11-02T10:00' is not an ISO 8601 date"),
    ],
)
def test_each_bad_register_field_rejects_the_row_naming_row_and_field(field: str, value: str, reason: str) -> None:
    with pytest.raises(InvalidMessageError) as caught:
        one(Format.REGISTER, register_row(**{field: value}))
    assert reason in caught.value.diagnostics
    assert caught.value.diagnostics.startswith(f"row 2, field {field}: ")
    assert caught.value.expression == ("row 2", field)
    assert "9434765918" not in caught.value.diagnostics  # the NHS number itself is never echoed


def test_text_with_control_characters_is_refused() -> None:
    reason = rejection(Format.ASC_JSON, asc_referral(reason="fell\x00down"))
    assert reason == "row 2, field reason: contains characters that are not printable text"


# --- adult social care --------------------------------------------------------------------------------


def test_adult_social_care_referral_is_a_service_request_as_the_contract_says() -> None:
    event = one(Format.ASC_JSON, asc_referral())
    key = person_key(SECRET, NHS, None)
    assert event.event_type == co.REFERRAL_RECEIVED.type
    assert (event.sender, event.person_key) == ("E10000023", key)
    assert event.event_time == datetime(2026, 11, 3, tzinfo=UTC)
    (request,) = resources(event, "ServiceRequest")
    assert (request["status"], request["intent"], request["authoredOn"]) == ("active", "order", "2026-11-03")
    assert request["category"][0]["coding"][0] == {
        "system": co.SNOMED,
        "code": co.PATIENT_REFERRAL,
        "display": "Patient referral",
    }
    assert request["subject"] == {
        "reference": f"Patient/{key}",
        "identifier": {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": NHS},
    }
    assert request["requester"] == {
        "identifier": {"system": LOCAL_AUTHORITY_SYSTEM, "value": "E10000023"},
        "display": "Adult social care",
    }
    assert request["performer"] == [
        {"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "Y0PIC"}}
    ]
    assert request["reasonCode"] == [{"text": "Lives alone after a fall"}]
    (source,) = [e for e in request["extension"] if e["url"] == co.SOURCE_EXTENSION]
    assert source["valueCodeableConcept"]["coding"][0] == {
        "system": co.REFERRAL_SOURCE_SYSTEM,
        "code": "adult-social-care",
    }
    (patient,) = resources(event, "Patient")
    assert patient["birthDate"] == "1938-02-01"
    assert "name" not in patient
    assert not resources(event, "Observation")


def test_care_act_assessment_outcome_rides_in_the_referral_bundle_as_an_observation() -> None:
    event = one(Format.ASC_JSON, asc_referral(care_act_assessment_outcome="Eligible"))
    (request,) = resources(event, "ServiceRequest")
    (assessment,) = resources(event, "Observation")
    assert request["supportingInfo"] == [{"reference": f"Observation/{assessment['id']}"}]
    assert assessment["valueCodeableConcept"]["coding"][0]["system"] == CARE_ACT_SYSTEM
    assert assessment["valueCodeableConcept"]["coding"][0]["code"] == "eligible"
    assert assessment["performer"][0]["identifier"]["value"] == "E10000023"
    reason = rejection(Format.ASC_JSON, asc_referral(care_act_assessment_outcome="maybe"))
    assert reason.startswith("row 2, field care_act_assessment_outcome: 'maybe' is not one of eligible")


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("referrer", "Y90001", "field referrer: 'Y90001' is not a local-authority (ONS) code"),
        ("referrer", None, "field referrer: is required"),
        ("addressed_to", "Y0-PIC", "field addressed_to: 'Y0-PIC' is not an ODS code"),
        ("gp_practice_ods", None, "field gp_practice_ods: is required"),
        ("referred_on", "3 Nov 2026", "field referred_on: '3 Nov 2026' is not an ISO 8601 date or date-time"),
        ("referred_on", "2026-11-03T25:00", "field referred_on: '2026-11-03T25:00' is not a real date and time"),
        ("referred_on", "2026-11-03T10:00+15:00", "has a UTC offset beyond 14 hours"),
        ("reason", "  ", "field reason: is required"),
        ("reason", 42, "field reason: must be a string, got int"),
        ("reason", "x" * 2001, "field reason: is longer than 2000 characters"),
        ("referral_id", "R" * 65, "field referral_id: is longer than 64 characters"),
        ("nhs_number", 9434765919, "field nhs_number: must be a string, got int"),
    ],
)
def test_each_bad_referral_field_rejects_the_document(field: str, value: Any, reason: str) -> None:
    assert reason in rejection(Format.ASC_JSON, asc_referral(**{field: value}))


def test_a_referral_time_without_an_offset_is_uk_local_time() -> None:
    event = one(Format.ASC_JSON, asc_referral(referred_on="2026-07-01T09:30:00"))
    assert event.event_time == datetime(2026, 7, 1, 8, 30, tzinfo=UTC)
    assert resources(event, "ServiceRequest")[0]["authoredOn"] == "2026-07-01T09:30:00+01:00"


def test_the_same_referral_as_csv_or_json_is_the_same_event() -> None:
    from_json = one(Format.ASC_JSON, asc_referral())
    (from_csv,) = map_file(csv_of([asc_referral()], ASC_HEADER), Format.ASC_CSV)
    assert isinstance(from_csv, MappedEvent)
    assert from_csv.event_id == from_json.event_id
    assert from_csv.payload == from_json.payload


def test_without_a_referral_id_the_request_id_comes_from_person_date_and_recipient() -> None:
    a = one(Format.ASC_JSON, asc_referral(referral_id=None))
    b = one(Format.ASC_JSON, asc_referral(referral_id=None, reason="another wording"))
    c = one(Format.ASC_JSON, asc_referral(referral_id=None, referred_on="2026-11-04"))
    ids = [resources(e, "ServiceRequest")[0]["id"] for e in (a, b, c)]
    assert ids[0] == ids[1] != ids[2]
    assert a.event_id != b.event_id  # a corrected row is a new event about the same referral


# --- voluntary sector -----------------------------------------------------------------------------------


def test_voluntary_sector_referral_names_the_needs_as_reasons() -> None:
    event = one(Format.VCSE_JSON, vcse_referral(needs=["Social-Isolation", "carer-support"], reason="Lunch club"))
    (request,) = resources(event, "ServiceRequest")
    assert [r["text"] for r in request["reasonCode"]] == ["Social isolation", "Carer support", "Lunch club"]
    assert request["requester"]["identifier"]["value"] == "VCS001"
    assert request["requester"]["display"] == "Example Age Concern"
    assert request["identifier"] == [{"system": "https://carehub.invalid/Id/referral/VCS001", "value": "VCS-1"}]
    source = request["extension"][0]["valueCodeableConcept"]["coding"][0]["code"]
    assert source == "voluntary-sector"


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"needs": [], "reason": None}, "row 2, field reason: is required"),
        ({"needs": ["loneliness"]}, "row 2, field needs: 'loneliness' is not one of social-isolation"),
        ({"needs": "social-isolation"}, "row 2, field needs: must be a list of strings"),
        ({"referral_id": None}, "row 2, field referral_id: is required"),
        ({"referrer": "E10000023"}, "row 2, field referrer: 'E10000023' is not an ODS code"),
    ],
)
def test_bad_voluntary_sector_referrals_are_rejected(changes: dict[str, Any], reason: str) -> None:
    assert rejection(Format.VCSE_JSON, vcse_referral(**changes)).startswith(reason)


@pytest.mark.parametrize(
    ("said", "status"), [("contacted", "active"), ("attended", "completed"), ("declined", "revoked")]
)
def test_an_outcome_updates_the_same_service_request(said: str, status: str) -> None:
    referral = one(Format.VCSE_JSON, vcse_referral())
    update = one(Format.VCSE_OUTCOME, outcome(outcome=said))
    (before,) = resources(referral, "ServiceRequest")
    (after,) = resources(update, "ServiceRequest")
    assert update.event_type == co.REFERRAL_OUTCOME.type
    assert after["id"] == before["id"]
    assert after["status"] == status
    assert {"url": co.OUTCOME_EXTENSION, "valueCode": said} in after["extension"]
    assert update.event_time == datetime(2026, 11, 12, tzinfo=UTC)
    assert update.person_key == referral.person_key
    assert [e["resource"]["resourceType"] for e in update.payload["entry"]] == ["ServiceRequest"]


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"outcome": "maybe"}, "row 2, field outcome: 'maybe' is not one of contacted, attended, declined"),
        ({"on": "12/11/2026"}, "row 2, field on: '12/11/2026' is not an ISO 8601 date"),
        ({"nhs_number": None}, "row 2, field nhs_number: is required"),
        ({"referral_id": ""}, "row 2, field referral_id: is required"),
    ],
)
def test_bad_outcome_updates_are_rejected(changes: dict[str, Any], reason: str) -> None:
    assert rejection(Format.VCSE_OUTCOME, outcome(**changes)).startswith(reason)


@pytest.mark.parametrize(
    ("fmt", "values", "field", "shown"),
    [
        (Format.ASC_JSON, asc_referral(referred_on="2026-11-26"), "referred_on", "2026-11-26"),
        (Format.ASC_JSON, asc_referral(referred_on="2027-02-01T00:00:00Z"), "referred_on", "2027-02-01T00:00:00+00:00"),
        (
            Format.VCSE_JSON,
            vcse_referral(referred_on="2026-11-25T00:06:00Z"),
            "referred_on",
            "2026-11-25T00:06:00+00:00",
        ),
        (Format.VCSE_OUTCOME, outcome(on="2027-02-01"), "on", "2027-02-01"),
        (Format.VCSE_OUTCOME, outcome(on="2026-11-25T01:00:00+00:00"), "on", "2026-11-25T01:00:00+00:00"),
        (Format.REGISTER, register_row(extracted_on="2026-11-26"), "extracted_on", "2026-11-26"),
        (Format.REGISTER, register_row(extracted_on="2031-01-01"), "extracted_on", "2031-01-01"),
    ],
)
def test_a_register_row_referral_or_outcome_dated_in_the_future_is_rejected_naming_row_and_field(
    fmt: Format, values: dict[str, Any], field: str, shown: str
) -> None:
    reason = rejection(fmt, values, now=NOW)
    assert reason.startswith(f"row 2, field {field}: {shown} is in the future ("), reason


@pytest.mark.parametrize(
    ("fmt", "values"),
    [
        (Format.ASC_JSON, asc_referral(referred_on="2026-11-25")),  # today, whatever the hour
        (Format.VCSE_JSON, vcse_referral(referred_on="2026-11-25T00:04:59Z")),  # within the clock skew
        (Format.VCSE_OUTCOME, outcome(on="2026-11-25T00:00:00")),  # UK local time, GMT in November
        (Format.REGISTER, register_row(extracted_on="2026-11-25")),  # extracted today
    ],
)
def test_a_row_dated_now_or_within_the_clock_skew_is_taken(fmt: Format, values: dict[str, Any]) -> None:
    assert one(fmt, values, now=NOW).event_time <= NOW + timedelta(minutes=5)


def test_a_date_is_in_the_future_by_the_uk_calendar() -> None:
    late_evening_in_summer = datetime(2026, 7, 1, 23, 30, tzinfo=UTC)  # 00:30 on 2 July in London
    assert one(Format.ASC_JSON, asc_referral(referred_on="2026-07-02"), now=late_evening_in_summer)
    assert "is in the future" in rejection(
        Format.ASC_JSON, asc_referral(referred_on="2026-07-03"), now=late_evening_in_summer
    )


def test_a_register_extracted_tomorrow_by_the_file_date_is_in_the_future_too() -> None:
    reason = rejection(Format.REGISTER, register_row(extracted_on=""), extracted_on=date(2026, 11, 26))
    assert reason.startswith("row 2, field extracted_on: 2026-11-26 is in the future (today is 2026-11-25 in the UK)")


# --- ids, idempotency ---------------------------------------------------------------------------------


def test_event_ids_are_deterministic_and_do_not_depend_on_row_order() -> None:
    rows = [register_row(), register_row(nhs_number=OTHER_NHS, frailty="none")]
    first = [e.event_id for e in map_file(csv_of(rows), Format.REGISTER) if isinstance(e, MappedEvent)]
    again = [e.event_id for e in map_file(csv_of(rows[::-1]), Format.REGISTER) if isinstance(e, MappedEvent)]
    assert len(set(first)) == 2
    assert sorted(first) == sorted(again)


def test_a_corrected_row_is_a_new_event_about_the_same_observations() -> None:
    before = one(Format.REGISTER, register_row())
    after = one(Format.REGISTER, register_row(long_term_conditions="4"))
    next_month = one(Format.REGISTER, register_row(extracted_on="2026-12-01"), now=NOW + timedelta(days=6))
    ids = [sorted(o["id"] for o in resources(e, "Observation")) for e in (before, after, next_month)]
    assert before.event_id != after.event_id
    assert ids[0] == ids[1] != ids[2]


def test_ids_are_made_from_the_person_key_never_the_nhs_number() -> None:
    event = one(Format.REGISTER, register_row())
    text = json.dumps([event.event_id, *(e["resource"]["id"] for e in event.payload["entry"])])
    assert NHS not in text


# --- reading files --------------------------------------------------------------------------------------


def test_csv_rows_are_numbered_as_a_spreadsheet_shows_them_and_kept_with_the_header() -> None:
    raw = (
        "\ufeff" + REGISTER_HEADER + "\r\n\r\n"
        f'{NHS},Y90001,0,"1\n",none,,2026-11-02\r\n,,,,,,\r\n{OTHER_NHS},Y90001,1,1,mild,,2026-11-02\r\n'
    ).encode()
    rows = read_rows(raw, Format.REGISTER)
    assert [r.number for r in rows] == [3, 5]
    assert rows[0].raw == f'{REGISTER_HEADER}\r\n{NHS},Y90001,0,"1\n",none,,2026-11-02\r\n'.encode()
    assert rows[1].values["nhs_number"] == OTHER_NHS


def test_a_row_with_the_wrong_number_of_values_is_rejected_alone() -> None:
    raw = csv_of([register_row()]) + f"{NHS},Y90001,1\n".encode() + csv_of([register_row()]).split(b"\n", 1)[1]
    results = map_file(raw, Format.REGISTER)
    assert [type(r).__name__ for r in results] == ["MappedEvent", "InvalidMessageError", "MappedEvent"]
    assert str(results[1]).startswith("row 3: has 3 values, the header names 7")


@pytest.mark.parametrize(
    ("raw", "fmt", "reason"),
    [
        (b"nhs_number,frailty\n1,2\n", Format.REGISTER, "row 1 (the header) lacks the column(s) practice_ods"),
        (b"nhs_number,nhs_number,x\n", Format.REGISTER, "row 1 (the header) names nhs_number twice"),
        (b"", Format.ASC_CSV, "the file is empty"),
        (b"\xff\xfen\x00h\x00", Format.ASC_CSV, "the file is UTF-16 text, not UTF-8: save it as"),
        (b"nhs_number\n\xe9", Format.ASC_CSV, "row 2 (line 2): byte 0xE9 at offset 11 of the file"),
        (b"{", Format.ASC_JSON, "the file is not JSON"),
        (b'"a referral"', Format.VCSE_JSON, "the file holds a JSON str, not a document"),
        (b"  ", Format.VCSE_OUTCOME, "the file is empty"),
    ],
)
def test_a_file_that_cannot_be_read_at_all_is_rejected_whole(raw: bytes, fmt: Format, reason: str) -> None:
    with pytest.raises(InvalidMessageError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        read_rows(raw, fmt)


def test_json_arrays_are_rows_and_an_element_that_is_not_a_document_is_rejected_alone() -> None:
    raw = orjson.dumps([vcse_referral(), 7, vcse_referral(referral_id="VCS-2")])
    rows = read_rows(raw, Format.VCSE_JSON)
    assert [r.number for r in rows] == [1, 2, 3]
    assert rows[1].raw == b"7"
    assert rows[1].problem is not None and str(rows[1].problem).startswith("row 2: is not a JSON object")
    assert orjson.loads(rows[2].raw)["referral_id"] == "VCS-2"
    single = orjson.dumps(vcse_referral(), option=orjson.OPT_INDENT_2)
    assert read_rows(single, Format.VCSE_JSON)[0].raw == single  # one document is kept byte for byte


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("1-register.csv", Format.REGISTER),
        ("2-asc-referrals.csv", Format.ASC_CSV),
        ("3-asc-referral.json", Format.ASC_JSON),
        ("4-vcse-referrals.json", Format.VCSE_JSON),
        ("5-vcse-outcomes.json", Format.VCSE_OUTCOME),
    ],
)
def test_the_format_is_detected_from_the_content(name: str, fmt: Format) -> None:
    assert detect((EXAMPLES / name).read_bytes()) is fmt


@pytest.mark.parametrize("raw", [b"a,b\n1,2\n", b'{"referrer": "?"}', b"[]"])
def test_undetectable_content_asks_for_the_format(raw: bytes) -> None:
    with pytest.raises(UnsupportedMessageError, match="name the format"):
        detect(raw)


def test_every_example_maps_and_uses_test_range_nhs_numbers() -> None:
    files = sorted(EXAMPLES.iterdir())
    assert len(files) == 5
    for path in files:
        raw = path.read_bytes()
        for result in map_file(raw, detect(raw)):
            assert isinstance(result, MappedEvent), f"{path.name}: {result}"
            nhs = result.payload["entry"][0]["resource"]
            number = (nhs.get("subject") or {}).get("identifier", {}).get("value") or nhs["identifier"][0]["value"]
            assert number.startswith("999")


# --- the record accepts what the adapter makes -----------------------------------------------------------


def record_events(events: list[MappedEvent]) -> list[RecordEvent]:
    return [RecordEvent(e.event_id, e.event_type, e.source, e.event_time, e.person_key, e.payload) for e in events]


def apply(store: MemoryRecordStore, events: list[MappedEvent]) -> tuple[int, int]:
    with store.unit_of_work() as uow:
        result = apply_events(uow, record_events(events))
        uow.commit()
    return result.applied, result.duplicates


def example_events() -> list[MappedEvent]:
    events = []
    for path in sorted(EXAMPLES.iterdir()):
        raw = path.read_bytes()
        events += [e for e in map_file(raw, detect(raw)) if isinstance(e, MappedEvent)]
    return events


def test_the_record_files_every_example_and_applies_a_second_ingest_once() -> None:
    store = MemoryRecordStore()
    events = example_events()
    assert apply(store, events) == (18, 0)
    reader = store.reader()
    counts = reader.counts()
    assert counts["ServiceRequest"] == 6
    assert counts["Observation"] == 10 * 3 + 3  # register measures, and three Care Act assessments
    assert counts["Patient"] == 14
    before = dict(store.resources)
    assert apply(store, example_events()) == (0, 18)
    assert store.resources == before


def test_a_declined_outcome_revokes_the_referral_in_the_record() -> None:
    store = MemoryRecordStore()
    referral = one(Format.VCSE_JSON, vcse_referral())
    apply(store, [referral, one(Format.VCSE_OUTCOME, outcome(outcome="declined"))])
    request = store.reader().read("ServiceRequest", resources(referral, "ServiceRequest")[0]["id"])
    assert request is not None and request["status"] == "revoked"


def test_an_outcome_keeps_what_the_referral_said() -> None:
    store = MemoryRecordStore()
    referral = one(Format.VCSE_JSON, vcse_referral())
    said = resources(referral, "ServiceRequest")[0]
    apply(store, [referral, one(Format.VCSE_OUTCOME, outcome(outcome="declined"))])
    request = store.reader().read("ServiceRequest", said["id"])
    assert request is not None
    assert request["reasonCode"] == said["reasonCode"]
    assert request["authoredOn"] == said["authoredOn"]
    assert request["status"] == "revoked"
    outcomes = [e for e in request["extension"] if e["url"] == OUTCOME_EXTENSION]
    assert [e["valueCode"] for e in outcomes] == ["declined"]


# --- the service: publish or dead-letter, row by row -----------------------------------------------------


class FakeBroker:
    """Records what is published; optionally refuses (as Kafka would by timing out)."""

    def __init__(self, *, down: bool = False) -> None:
        self.sent: list[tuple[str, bytes, bytes, dict[str, str]]] = []
        self.down = down

    async def publish(self, value: bytes, topic: str, *, key: bytes, headers: dict[str, str]) -> None:
        if self.down:
            raise OSError("connection refused")
        self.sent.append((topic, value, key, headers))

    def on(self, topic: str) -> list[tuple[str, bytes, bytes, dict[str, str]]]:
        return [s for s in self.sent if s[0] == topic]


def intake(broker: FakeBroker) -> ReferralIntake:
    return ReferralIntake(broker, key_secret=SECRET, clock=lambda: NOW)  # type: ignore[arg-type]


async def test_good_rows_are_published_and_a_bad_row_is_dead_lettered_whole_with_row_and_field() -> None:
    broker = FakeBroker()
    rows = [register_row(), register_row(nhs_number="9434765918"), register_row(nhs_number=OTHER_NHS)]
    outcomes = await intake(broker).ingest(csv_of(rows), "file:/data/reg.csv", Format.REGISTER)
    assert [(o.row, o.status) for o in outcomes] == [(2, ACCEPTED), (3, REJECTED), (4, ACCEPTED)]
    assert outcomes[1].reason and outcomes[1].reason.startswith("row 3, field nhs_number: fails the Modulus 11")
    published = broker.on(EVENTS.name)
    assert len(published) == 2
    for _, value, key, headers in published:
        envelope = Envelope.from_kafka(value, headers)
        assert envelope.type == co.REGISTER_ROW.type
        assert key.decode() == envelope.subject
        assert NHS not in json.dumps(headers)
    ((_, value, key, headers),) = broker.on(DEAD_LETTER.name)
    assert value == f"{REGISTER_HEADER}\n9434765918,Y90001,2,3,moderate,1938-02-01,2026-11-02\n".encode()
    assert (key, headers["content-type"], headers["ce_type"]) == (b"Y90001", "text/csv", INPUT_REJECTED.type)
    assert headers[ORIGIN_HEADER] == "file:/data/reg.csv#row=3"
    issue = orjson.loads(headers[OUTCOME_HEADER])["issue"][0]
    assert issue["expression"] == ["row 3", "nhs_number"]
    assert issue["diagnostics"].startswith("row 3, field nhs_number:")


async def test_a_bad_json_document_is_dead_lettered_as_json() -> None:
    broker = FakeBroker()
    raw = orjson.dumps([vcse_referral(), vcse_referral(referral_id="VCS-2", referred_on="soon")])
    outcomes = await intake(broker).ingest(raw, "file:v.json")  # detected
    assert [o.status for o in outcomes] == [ACCEPTED, REJECTED]
    ((_, value, _, headers),) = broker.on(DEAD_LETTER.name)
    assert headers["content-type"] == "application/json"
    assert orjson.loads(value)["referral_id"] == "VCS-2"
    assert headers["ce_source"] == "urn:ods:VCS001"


async def test_a_row_dated_in_the_future_is_dead_lettered_whole_and_the_others_go_on() -> None:
    broker = FakeBroker()
    rows = [
        asc_referral(),
        asc_referral(referral_id="ASC-2", referred_on="2027-02-01"),
        asc_referral(referral_id="ASC-3"),
    ]
    outcomes = await intake(broker).ingest(csv_of(rows, ASC_HEADER), "file:/data/asc.csv", Format.ASC_CSV)
    assert [(o.row, o.status) for o in outcomes] == [(2, ACCEPTED), (3, REJECTED), (4, ACCEPTED)]
    assert outcomes[1].reason and outcomes[1].reason.startswith("row 3, field referred_on: 2027-02-01 is in the future")
    assert len(broker.on(EVENTS.name)) == 2
    ((_, value, _, headers),) = broker.on(DEAD_LETTER.name)
    assert value.decode().splitlines()[1].startswith("ASC-2,") and value.decode().count("\n") == 2
    issue = orjson.loads(headers[OUTCOME_HEADER])["issue"][0]
    assert issue["expression"] == ["row 3", "referred_on"]


async def test_a_register_row_extracted_in_the_future_is_dead_lettered_whole_and_the_others_go_on() -> None:
    broker = FakeBroker()
    rows = [register_row(), register_row(nhs_number=OTHER_NHS, extracted_on="2027-02-01"), register_row(frailty="mild")]
    outcomes = await intake(broker).ingest(csv_of(rows), "file:/data/reg.csv", Format.REGISTER)
    assert [(o.row, o.status) for o in outcomes] == [(2, ACCEPTED), (3, REJECTED), (4, ACCEPTED)]
    assert outcomes[1].reason and outcomes[1].reason.startswith(
        "row 3, field extracted_on: 2027-02-01 is in the future"
    )
    assert len(broker.on(EVENTS.name)) == 2
    ((_, value, key, headers),) = broker.on(DEAD_LETTER.name)
    assert value == f"{REGISTER_HEADER}\n{OTHER_NHS},Y90001,2,3,moderate,1938-02-01,2027-02-01\n".encode()
    assert (key, headers[ORIGIN_HEADER]) == (b"Y90001", "file:/data/reg.csv#row=3")
    issue = orjson.loads(headers[OUTCOME_HEADER])["issue"][0]
    assert issue["expression"] == ["row 3", "extracted_on"]


async def test_an_unreadable_file_is_dead_lettered_whole() -> None:
    broker = FakeBroker()
    (result,) = await intake(broker).ingest(b"[{", "file:x.json")
    assert (result.row, result.status, result.dead_lettered) == (None, REJECTED, True)
    ((_, value, key, headers),) = broker.on(DEAD_LETTER.name)
    assert (value, key, headers["content-type"]) == (b"[{", b"unknown", "application/json")


async def test_rows_kafka_does_not_acknowledge_are_not_sent_and_not_dead_lettered() -> None:
    broker = FakeBroker(down=True)
    outcomes = await intake(broker).ingest(csv_of([register_row(), register_row(frailty="?")]), "f", Format.REGISTER)
    assert [(o.status, o.dead_lettered) for o in outcomes] == [(NOT_SENT, False), (NOT_SENT, False)]
    assert outcomes[1].reason and "not dead-lettered" in outcomes[1].reason


async def test_info_logs_name_neither_nhs_numbers_nor_values(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="adapters.referrals")
    rows = [register_row(nhs_number="9434765918"), register_row(practice_ods="ZZ9434765919")]
    await intake(FakeBroker()).ingest(csv_of(rows), "f", Format.REGISTER)
    text = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.INFO)
    assert "row 2 rejected" in text and "row 3 rejected" in text
    assert "943476591" not in text


# --- hostile input -----------------------------------------------------------------------------------------


def survive(raw: bytes, fmt: Format | None) -> list[MappedEvent]:
    """Only HubError may escape; every event is a well-formed Bundle with an aware time."""
    events: list[MappedEvent] = []
    problems: list[tuple[int | None, HubError]] = []
    rows: list[Row] = []
    try:
        chosen = fmt or detect(raw)
        rows = read_rows(raw, chosen)
    except HubError as error:
        problems.append((None, error))
    for row in rows:
        try:
            events.append(map_row(chosen, row, key_secret=SECRET, now=NOW))
        except HubError as error:
            problems.append((row.number, error))
        assert isinstance(row.raw, bytes)
    for number, problem in problems:
        assert problem.diagnostics.startswith(f"row {number}") if number else problem.diagnostics
    for event in events:
        assert event.event_time.tzinfo is not None
        assert event.payload["resourceType"] == "Bundle"
        orjson.dumps(event.payload)
    return events


CSV_TOKENS = (
    *REGISTER_HEADER.split(","),
    *ASC_HEADER.split(","),
    *(",", "\n", "\r\n", "\r", '"', " ", "\x00", "\ufeff", "é", "\ud800", "𝟘", "-1", "7", "mild", "eligible"),
    *(NHS, "9434765918", "Y90001", "Y0PIC", "E10000023", "2026-11-02", "2026-02-30", "1900-01-01"),
)
CSV_TEXT = st.tuples(
    st.sampled_from(["", REGISTER_HEADER + "\n", ASC_HEADER + "\n"]),
    st.lists(st.sampled_from(CSV_TOKENS), max_size=60).map("".join),
).map("".join)
JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
JSON_FIELDS = st.sampled_from(sorted({*asc_referral(), *vcse_referral(), *outcome(), "care_act_assessment_outcome"}))
JSON_VALUES = st.recursive(
    JSON_SCALARS | st.sampled_from([NHS, "Y90001", "E10000023", "VCS001", "2026-11-02", "declined"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(JSON_FIELDS | st.text(max_size=5), inner, max_size=4),
    max_leaves=12,
)


@FUZZ
@given(CSV_TEXT, st.sampled_from([Format.REGISTER, Format.ASC_CSV, None]))
def test_arbitrary_csv_text_is_mapped_or_rejected_never_crashes(text: str, fmt: Format | None) -> None:
    survive(text.encode("utf-8", "surrogatepass"), fmt)


@FUZZ
@given(st.binary(max_size=500), st.sampled_from([*Format, None]))
def test_arbitrary_bytes_are_mapped_or_rejected_never_crash(raw: bytes, fmt: Format | None) -> None:
    survive(raw, fmt)


@FUZZ
@given(
    st.dictionaries(JSON_FIELDS, JSON_VALUES, max_size=10) | st.lists(JSON_VALUES, max_size=4),
    st.sampled_from([Format.ASC_JSON, Format.VCSE_JSON, Format.VCSE_OUTCOME, None]),
)
def test_arbitrary_json_is_mapped_or_rejected_never_crashes(document: Any, fmt: Format | None) -> None:
    try:
        raw = orjson.dumps(document)
    except orjson.JSONEncodeError:  # integers beyond 64 bits: not JSON orjson would hand us either
        raw = json.dumps(document).encode()
    survive(raw, fmt)


@st.composite
def valid_register_rows(draw: st.DrawFn) -> dict[str, str]:
    rng = random.Random(draw(st.integers(0, 2**32)))
    extracted = draw(st.dates(date(2000, 1, 1), NOW.date()))  # (a later one is in the future: rejected)
    born = draw(st.none() | st.dates(date(1900, 1, 1), extracted))
    return {
        "nhs_number": a_valid_nhs_number(rng),
        "practice_ods": draw(st.from_regex(r"[A-Z][0-9]{5}", fullmatch=True)),
        "non_elective_admissions_12m": str(draw(st.integers(0, 400))),
        "long_term_conditions": str(draw(st.integers(0, 40))),
        "frailty": draw(st.sampled_from(["none", "mild", "moderate", "severe"])),
        "birth_date": born.isoformat() if born else "",
        "extracted_on": extracted.isoformat(),
    }


@FUZZ
@given(st.lists(valid_register_rows(), min_size=1, max_size=5))
def test_valid_register_rows_always_map_one_event_each(rows: list[dict[str, str]]) -> None:
    results = map_file(csv_of(rows), Format.REGISTER)
    assert all(isinstance(r, MappedEvent) for r in results), results
    assert len(results) == len(rows)


@FUZZ
@given(
    st.from_regex(r"[A-Z][0-9]{5}", fullmatch=True),
    st.from_regex(r"[EWSN][0-9]{8}", fullmatch=True),
    st.text(min_size=1, max_size=200).filter(lambda t: t.strip() and t.isprintable()),
    st.datetimes(datetime(1990, 1, 1), NOW.replace(tzinfo=None)),
    st.sampled_from([None, "eligible", "not-eligible", "declined", "pending"]),
    st.integers(0, 2**32),
)
def test_valid_adult_social_care_referrals_always_map(
    practice: str, council: str, reason: str, when: datetime, assessment: str | None, seed: int
) -> None:
    doc = asc_referral(
        nhs_number=a_valid_nhs_number(random.Random(seed)),
        gp_practice_ods=practice,
        referrer=council,
        reason=reason,
        referred_on=when.isoformat(timespec="seconds"),
        care_act_assessment_outcome=assessment,
    )
    event = one(Format.ASC_JSON, doc)
    assert event.event_type == co.REFERRAL_RECEIVED.type
    assert len(resources(event, "Observation")) == (assessment is not None)
