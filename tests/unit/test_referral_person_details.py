"""A referral's person details (name, address, phone, a carer or next of kin), the referring worker and the
referrer's own case reference: read from the ASC and VCSE layouts, mapped to the stub Patient and the
ServiceRequest, checked naming row and field, and shown on the huddle page while no hospital or practice
has named the person."""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.referrals.person_details import FIELDS as PERSON_DETAILS
from adapters.referrals.rows import Format
from adapters.referrals.service import ACCEPTED, REJECTED
from adapters.referrals.to_fhir import LOCAL_AUTHORITY_SYSTEM, MappedEvent
from hub.core.errors import InvalidMessageError
from hub.core.huddle import agenda
from hub.referrals_ingest import file_notes
from hub.store.memory import MemoryRecordStore
from hub.web.views import gather, render_page
from tests.unit.test_referral_adapters import (
    EXAMPLES,
    NHS,
    FakeBroker,
    apply,
    asc_referral,
    csv_of,
    example_events,
    intake,
    map_file,
    one,
    rejection,
    resources,
    vcse_referral,
)

DETAILS = {
    "given_name": "Mary",
    "family_name": "Okafor",
    "address_line_1": "12 Elm Road",
    "address_line_2": "Exampleton",
    "postcode": "ex1 2ab",
    "phone": "01632 960123",
    "carer_name": "Daniel Okafor",
    "carer_relationship": "Son",
    "carer_phone": "07700 900456",
    "worker_name": "Sam Patel",
    "worker_phone": "01632 960999",
    "worker_email": "sam.patel@example.gov.uk",
    "case_reference": "MOS-448812",
}
ASC_HEADER = ",".join([*asc_referral(), *DETAILS])
MEETING = date(2026, 11, 5)  # the week before: Thu 29 Oct to Wed 4 Nov; the referral is on Tue 3 Nov


def request_of(event: MappedEvent) -> dict[str, Any]:
    (request,) = resources(event, "ServiceRequest")
    return request


def patient_of(event: MappedEvent) -> dict[str, Any]:
    (patient,) = resources(event, "Patient")
    return patient


# --- mapping -----------------------------------------------------------------------------------------


def test_a_council_referral_names_the_person_their_address_phone_and_carer_on_the_stub_patient() -> None:
    patient = patient_of(one(Format.ASC_JSON, asc_referral(**DETAILS)))
    assert patient["name"] == [{"family": "Okafor", "given": ["Mary"]}]
    assert patient["address"] == [{"use": "home", "line": ["12 Elm Road", "Exampleton"], "postalCode": "EX1 2AB"}]
    assert patient["telecom"] == [{"system": "phone", "value": "01632 960123", "use": "home"}]
    assert patient["contact"] == [
        {
            "relationship": [{"text": "Son"}],
            "name": {"text": "Daniel Okafor"},
            "telecom": [{"system": "phone", "value": "07700 900456", "use": "mobile"}],
        }
    ]


def test_the_referring_worker_is_a_contained_practitioner_role_the_requester_refers_to() -> None:
    request = request_of(one(Format.ASC_JSON, asc_referral(**DETAILS, referrer_name="Example County Council")))
    assert request["requester"] == {
        "reference": "#referring-worker",
        "identifier": {"system": LOCAL_AUTHORITY_SYSTEM, "value": "E10000023"},
        "display": "Example County Council",
    }
    assert request["contained"] == [
        {
            "resourceType": "PractitionerRole",
            "id": "referring-worker",
            "practitioner": {"display": "Sam Patel"},
            "organization": {
                "identifier": {"system": LOCAL_AUTHORITY_SYSTEM, "value": "E10000023"},
                "display": "Example County Council",
            },
            "telecom": [
                {"system": "phone", "value": "01632 960999", "use": "work"},
                {"system": "email", "value": "sam.patel@example.gov.uk", "use": "work"},
            ],
        }
    ]


def test_the_case_reference_is_an_identifier_whose_system_names_the_referrer_after_the_referral_id() -> None:
    request = request_of(one(Format.ASC_JSON, asc_referral(**DETAILS)))
    assert request["identifier"] == [
        {"system": "https://carehub.invalid/Id/referral/E10000023", "value": "ASC-1"},
        {"system": "https://carehub.invalid/Id/case-reference/E10000023", "value": "MOS-448812"},
    ]
    without_id = request_of(one(Format.ASC_JSON, asc_referral(referral_id=None, case_reference="MOS-1")))
    assert without_id["identifier"] == [
        {"system": "https://carehub.invalid/Id/case-reference/E10000023", "value": "MOS-1"}
    ]


def test_a_voluntary_sector_referral_reads_the_same_fields() -> None:
    event = one(Format.VCSE_JSON, vcse_referral(**DETAILS))
    assert patient_of(event)["name"] == [{"family": "Okafor", "given": ["Mary"]}]
    request = request_of(event)
    assert request["identifier"][1] == {
        "system": "https://carehub.invalid/Id/case-reference/VCS001",
        "value": "MOS-448812",
    }
    assert request["contained"][0]["organization"]["identifier"]["value"] == "VCS001"


def test_the_same_details_as_csv_or_json_are_the_same_event_and_no_column_is_ignored() -> None:
    (from_csv,) = map_file(csv_of([asc_referral(**DETAILS)], ASC_HEADER), Format.ASC_CSV)
    from_json = one(Format.ASC_JSON, asc_referral(**DETAILS))
    assert isinstance(from_csv, MappedEvent)
    assert (from_csv.event_id, from_csv.payload) == (from_json.event_id, from_json.payload)


async def test_the_walkthrough_file_is_accepted_with_nothing_named_as_ignored() -> None:
    read = await intake(FakeBroker()).ingest_file(
        csv_of([asc_referral(**DETAILS)], ASC_HEADER), "file:walkthrough.csv", Format.ASC_CSV
    )
    assert [o.status for o in read.outcomes] == [ACCEPTED]
    assert read.ignored == ()
    assert not any("ignored" in note for note in file_notes("walkthrough.csv", read))


def test_only_the_details_given_are_mapped() -> None:
    event = one(Format.ASC_JSON, asc_referral(family_name="Okafor", worker_email="duty@example.gov.uk"))
    patient = patient_of(event)
    assert patient["name"] == [{"family": "Okafor"}]
    assert not {"address", "telecom", "contact"} & set(patient)
    request = request_of(event)
    assert request["contained"][0]["telecom"] == [{"system": "email", "value": "duty@example.gov.uk", "use": "work"}]
    assert "practitioner" not in request["contained"][0]
    assert patient_of(one(Format.ASC_JSON, asc_referral(postcode="EX12AB")))["address"] == [
        {"use": "home", "postalCode": "EX1 2AB"}
    ]


def test_a_referral_without_the_details_is_the_event_it_was_before() -> None:
    # the ids pinned before these fields were read: files sent before are the same events
    assert one(Format.ASC_JSON, asc_referral()).event_id == "189468f1-b467-5e24-80dc-2f9a61e1889c"
    assert one(Format.VCSE_JSON, vcse_referral()).event_id == "ec32d261-0779-5455-bde4-8f5d453801dd"
    request = request_of(one(Format.ASC_JSON, asc_referral()))
    assert "contained" not in request and "reference" not in request["requester"]


def test_a_corrected_phone_number_is_a_new_event_about_the_same_referral() -> None:
    first = one(Format.ASC_JSON, asc_referral(**DETAILS))
    second = one(Format.ASC_JSON, asc_referral(**DETAILS | {"phone": "01632 960124"}))
    assert first.event_id != second.event_id
    assert request_of(first)["id"] == request_of(second)["id"]


@pytest.mark.parametrize(
    ("phone", "shown", "use"),
    [
        ("01632960123", "01632960123", "home"),
        ("(01632) 960-123", "(01632) 960-123", "home"),
        ("+44 (0)7700 900123", "+44 (0)7700 900123", "mobile"),
        ("+33 1 23 45 67 89", "+33 1 23 45 67 89", "home"),
        ("020 7946 0000", "020 7946 0000", "home"),
    ],
)
def test_phone_numbers_are_taken_as_written(phone: str, shown: str, use: str) -> None:
    patient = patient_of(one(Format.ASC_JSON, asc_referral(phone=phone)))
    assert patient["telecom"] == [{"system": "phone", "value": shown, "use": use}]


# --- validation ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("given_name", 42, "row 2, field given_name: must be a string, got int"),
        ("case_reference", "C" * 65, "row 2, field case_reference: is longer than 64 characters"),
        ("family_name", "x" * 2001, "row 2, field family_name: is longer than 2000 characters"),
    ],
)
def test_each_bad_detail_rejects_the_row_naming_row_and_field(field: str, value: Any, reason: str) -> None:
    assert rejection(Format.ASC_JSON, asc_referral(**{field: value})).startswith(reason)
    assert rejection(Format.VCSE_JSON, vcse_referral(**{field: value})).startswith(reason)


@pytest.mark.parametrize("value", ["EX1 2AB", "07700 900123", "sam.patel@example.gov.uk"])
def test_a_bad_value_is_not_echoed_in_the_warning(value: str) -> None:
    event = one(Format.ASC_JSON, asc_referral(postcode="ZZ" + value, phone=value + "x", worker_email="@" + value))
    assert len(event.warnings) == 3
    assert not any(value in said for said in event.warnings)


# --- a malformed optional detail is left out, not the referral ----------------------------------------------


@pytest.mark.parametrize(
    ("phone", "use"),
    [
        ("01632 960000 ext 4521", "home"),
        ("01632 960000 Ext. 4521", "home"),
        ("01632 960000 x4521", "home"),
        ("01632 960000 extension 4521", "home"),
        ("01632 960123 (home)", "home"),
        ("07700 900123 (mum's mobile)", "mobile"),
        ("01632 960000 ext 4521 (duty desk)", "home"),
        ("+44 (0)1632 960000 ext 12", "home"),
    ],
)
def test_a_uk_extension_and_a_short_note_in_brackets_are_taken_as_written(phone: str, use: str) -> None:
    event = one(Format.ASC_JSON, asc_referral(phone=phone, worker_phone=phone, carer_name="Dan", carer_phone=phone))
    assert event.warnings == ()
    patient = patient_of(event)
    assert patient["telecom"] == [{"system": "phone", "value": phone, "use": use}]
    assert patient["contact"][0]["telecom"][0]["value"] == phone
    assert request_of(event)["contained"][0]["telecom"] == [{"system": "phone", "value": phone, "use": "work"}]


@pytest.mark.parametrize(
    ("field", "value", "warning"),
    [
        ("phone", "0800 1111", "row 2, field phone: is not a phone number"),
        ("phone", "01632 960123 / 07700 900123", "row 2, field phone: is not a phone number"),
        ("phone", "not known", "row 2, field phone: is not a phone number"),
        ("phone", "0163296", "row 2, field phone: is not a phone number"),
        ("phone", "01632 960123 ext", "row 2, field phone: is not a phone number"),
        ("phone", "01632 960123 (a note far too long to be a short note)", "row 2, field phone: is not a phone"),
        ("phone", "7700900123", "row 2, field phone: has no leading 0"),
        ("phone", "7.7009E+09", "row 2, field phone: is a number Excel has shown in scientific notation"),
        ("phone", 1632960123, "row 2, field phone: must be a string, got int"),
        ("postcode", "EX1", "row 2, field postcode: is not a UK postcode"),
        ("postcode", "12345", "row 2, field postcode: is not a UK postcode"),
        ("postcode", "EX1 2ABC", "row 2, field postcode: is not a UK postcode"),
        ("carer_phone", "call the son", "row 2, field carer_phone: is not a phone number"),
        ("worker_phone", "x", "row 2, field worker_phone: is not a phone number"),
        ("worker_email", "sam.patel", "row 2, field worker_email: is not an email address"),
    ],
)
def test_a_malformed_optional_detail_is_left_out_with_a_warning_naming_row_and_field(
    field: str, value: Any, warning: str
) -> None:
    for fmt, values in ((Format.ASC_JSON, asc_referral(**DETAILS)), (Format.VCSE_JSON, vcse_referral(**DETAILS))):
        event = one(fmt, values | {field: value})
        (said,) = event.warnings
        assert said.startswith(warning)
        assert said.endswith("left out: the referral was accepted without it")
        whole = one(fmt, values)
        patient, request = patient_of(event), request_of(event)
        assert patient["name"] == patient_of(whole)["name"]  # the rest of what the row said is taken
        assert request["identifier"] == request_of(whole)["identifier"]
        left = {
            "phone": "telecom" not in patient,
            "postcode": "postalCode" not in patient["address"][0] and patient["address"][0]["line"],
            "carer_phone": "telecom" not in patient["contact"][0],
            "worker_phone": [t["system"] for t in request["contained"][0]["telecom"]] == ["email"],
            "worker_email": [t["system"] for t in request["contained"][0]["telecom"]] == ["phone"],
        }
        assert left[field]


def test_a_carer_relationship_whose_only_phone_is_left_out_is_left_out_with_it() -> None:
    event = one(Format.ASC_JSON, asc_referral(carer_relationship="Son", carer_phone="ring the son"))
    assert [w.split(":")[0] for w in event.warnings] == ["row 2, field carer_phone"]
    assert "contact" not in patient_of(event)


def test_a_row_that_leaves_a_bad_detail_out_is_the_event_of_the_row_without_it() -> None:
    assert (
        one(Format.ASC_JSON, asc_referral(phone="0800 1111")).event_id == one(Format.ASC_JSON, asc_referral()).event_id
    )


def test_a_bad_required_field_still_refuses_the_referral_whatever_its_details() -> None:
    assert rejection(Format.ASC_JSON, asc_referral(phone="0800 1111", reason=None)).startswith(
        "row 2, field reason: is required"
    )


async def test_the_rows_outcome_is_accepted_with_the_warning_and_logs_and_outcomes_echo_no_value(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="adapters.referrals")
    header = ASC_HEADER
    rows = [
        asc_referral(**DETAILS | {"worker_phone": "01632 960000 ext 4521", "phone": "01632 960123 (home)"}),
        asc_referral(**DETAILS | {"referral_id": "ASC-2", "phone": "0800 1111", "postcode": "EX1"}),
    ]
    broker = FakeBroker()
    outcomes = await intake(broker).ingest(csv_of(rows, header), "file:s5.csv", Format.ASC_CSV)
    assert [(o.row, o.status) for o in outcomes] == [(2, ACCEPTED), (3, ACCEPTED)]
    assert outcomes[0].reason is None
    assert outcomes[1].warnings == (
        "row 3, field postcode: is not a UK postcode (an outward and an inward code, such as SW1A 1AA or M1 1AE); "
        "left out: the referral was accepted without it",
        "row 3, field phone: is not a phone number (a UK number of 10 or 11 digits starting 0, such as 01632 "
        "960123, or an international one starting +, such as +44 1632 960123; spaces, brackets and dashes are "
        "fine, and an extension such as ext 4521 or a short note in brackets); left out: the referral was "
        "accepted without it",
    )
    assert outcomes[1].reason == "\n".join(f"warning: {w}" for w in outcomes[1].warnings)
    assert len(broker.sent) == 2  # both published, nothing dead-lettered
    text = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.INFO)
    assert "row 3 accepted without field(s) postcode, phone" in text
    for said in ("0800", "1111", "EX1", "Okafor", NHS):
        assert said not in text and said not in (outcomes[1].reason or "")


def test_a_carer_relationship_alone_names_no_one_to_call() -> None:
    reason = rejection(Format.ASC_JSON, asc_referral(carer_relationship="Daughter"))
    assert reason.startswith("row 2, field carer_name: is required when carer_relationship is given")


# --- the record and the huddle page --------------------------------------------------------------------------


def hospital_patient(event: MappedEvent) -> MappedEvent:
    """The same person as a hospital's ADT says them (a Patient that is not a stub)."""
    said = {
        k: v for k, v in patient_of(event).items() if k in ("resourceType", "id", "identifier", "generalPractitioner")
    }
    patient = said | {
        "name": [{"use": "official", "family": "OKAFOR-JONES", "given": ["MARY"]}],
        "address": [{"use": "home", "postalCode": "EX9 9ZZ"}],
    }
    payload = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": patient}]}
    return MappedEvent(
        "uk.nhs.carehub.patient.updated.v1", "hospital-1", "RX1", event.event_time, event.person_key, payload
    )


def huddle_page(store: MemoryRecordStore) -> str:
    shown = agenda("Y90001", MEETING, gather(store.reader(), "Y90001"))
    return render_page(shown, generated=datetime(2026, 11, 5, 9, tzinfo=UTC), viewer="test")


def test_the_huddle_page_names_a_council_referred_person_no_hospital_or_practice_has_named() -> None:
    store = MemoryRecordStore()
    apply(store, [one(Format.ASC_JSON, asc_referral(**DETAILS))])
    page = huddle_page(store)
    assert "Mary Okafor" in page
    assert "(name not held)" not in page


def test_a_referral_never_replaces_what_a_hospital_said_of_the_person() -> None:
    store = MemoryRecordStore()
    referral = one(Format.ASC_JSON, asc_referral(**DETAILS))
    apply(store, [hospital_patient(referral)])
    apply(store, [one(Format.ASC_JSON, asc_referral(**DETAILS, referral_id="ASC-2"))])
    held = store.reader().read("Patient", referral.person_key)
    assert held is not None and held["name"][0]["family"] == "OKAFOR-JONES"
    assert held["address"] == [{"use": "home", "postalCode": "EX9 9ZZ"}]
    assert "telecom" not in held and "contact" not in held
    assert "MARY OKAFOR-JONES" in huddle_page(store)


def test_what_a_hospital_says_later_replaces_the_referrals_stub() -> None:
    store = MemoryRecordStore()
    referral = one(Format.ASC_JSON, asc_referral(**DETAILS))
    apply(store, [referral, hospital_patient(referral)])
    held = store.reader().read("Patient", referral.person_key)
    assert held is not None and held["name"] == [{"use": "official", "family": "OKAFOR-JONES", "given": ["MARY"]}]


# --- patient data stays out of info logs ---------------------------------------------------------------------


async def test_info_logs_name_no_name_address_or_phone(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="adapters.referrals")
    bad = asc_referral(**DETAILS | {"phone": "Mary Okafor 0163"})
    refused = asc_referral(**DETAILS | {"referral_id": "ASC-3", "referred_on": "Mary Okafor"})
    good = asc_referral(**DETAILS | {"referral_id": "ASC-2"})
    outcomes = await intake(FakeBroker()).ingest(csv_of([bad, refused, good], ASC_HEADER), "f", Format.ASC_CSV)
    assert [o.status for o in outcomes] == [ACCEPTED, REJECTED, ACCEPTED]
    text = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.INFO)
    assert "row 2 accepted without field(s) phone" in text
    assert "row 3 rejected" in text
    for said in ("Mary", "Okafor", "Elm Road", "EX1", "960123", "Daniel", "Sam Patel", NHS):
        assert said not in text
    assert not any(said in (outcomes[0].reason or "") for said in ("Mary", "Okafor", "0163 ", NHS))


def test_the_examples_name_the_people_they_introduce() -> None:
    store = MemoryRecordStore()
    events = example_events()
    apply(store, events)
    named = {
        " ".join([*n[0].get("given", []), n[0]["family"]])
        for p in store.reader().search("Patient", None)
        if (n := p.get("name"))
    }
    assert named == {"Mary Okafor", "Albert Nwosu", "Edna Price"}


def test_the_readme_example_row_maps_as_its_table_says() -> None:
    text = (EXAMPLES.parent / "README.md").read_text()
    block = text.split("**Person details**", 1)[1].split("```csv\n", 1)[1].split("```", 1)[0]
    (event,) = map_file(block.encode(), Format.ASC_CSV)
    assert isinstance(event, MappedEvent)
    assert patient_of(event)["name"] == [{"family": "Okafor", "given": ["Mary"]}]
    assert request_of(event)["identifier"][1]["system"] == "https://carehub.invalid/Id/case-reference/E10000023"


DETAIL_VALUES = st.one_of(
    st.none(),
    st.integers(),
    st.text(max_size=30),
    st.sampled_from(["EX1 2AB", "gir 0aa", "+44 (0)20 7946 0000", "07700900123", "a@b.co", "(0)", "+", "00"]),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(PERSON_DETAILS), DETAIL_VALUES, max_size=6))
def test_any_details_are_mapped_as_valid_fhir_or_rejected_naming_row_and_field(details: dict[str, Any]) -> None:
    problem: InvalidMessageError | None = None
    try:
        event = one(Format.ASC_JSON, asc_referral(**details))
    except InvalidMessageError as error:
        problem = error
    if problem is not None:
        assert problem.diagnostics.startswith("row 2, field ")
        assert problem.expression[1] in PERSON_DETAILS
    else:
        assert event.event_type == "uk.nhs.carehub.referral.received.v1"
        assert all(w.startswith("row 2, field ") for w in event.warnings)
