"""The huddle / MDT agenda (hub.core.huddle), against hand-computed expectations.

The meeting is on Thursday 26 November 2026, so the window is Thursday 19 November 00:00 to
Wednesday 25 November 23:59:59 (Europe/London = UTC in November).
"""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest
from fhir.resources.R4B.list import List as FhirList

from hub.core.huddle import (
    SECTION_SYSTEM,
    agenda,
    disclosed,
    display_name,
    event_id,
    practice_codes,
    practice_reference,
    to_fhir_list,
    withhold,
)
from hub.core.huddle_reading import local_day
from schemas.events.coordination import (
    BUSINESS_STATUS_SYSTEM,
    CONTACT_SYSTEM,
    CRITERION_EXTENSION,
    ELIGIBLE,
    FLAG_SYSTEM,
    OUTCOME_EXTENSION,
    SOURCE_EXTENSION,
    TASK_SYSTEM,
)

Json = dict[str, Any]
ODS = "https://fhir.nhs.uk/Id/ods-organization-code"
NHS = "https://fhir.nhs.uk/Id/nhs-number"
MEETING = date(2026, 11, 26)
HERE, THERE = "Y00001", "Y00002"


def a_patient(key: str, practice: str = HERE, *, nhs: str = "9434765919", by: str = "identifier") -> Json:
    gp = {"identifier": {"system": ODS, "value": practice}} if by == "identifier" else {"reference": by}
    return {
        "resourceType": "Patient",
        "id": key,
        "identifier": [{"system": NHS, "value": nhs}],
        "name": [{"family": "SMITH", "given": ["Jane"]}],
        "generalPractitioner": [gp],
    }


def a_referral(rid: str, key: str, authored: str, status: str = "active") -> Json:
    return {
        "resourceType": "ServiceRequest",
        "id": rid,
        "status": status,
        "intent": "order",
        "subject": {"reference": f"Patient/{key}"},
        "authoredOn": authored,
        "requester": {"identifier": {"system": ODS, "value": "VCS01"}, "display": "Age UK Croydon"},
        "reasonCode": [{"text": "lives alone, two falls"}],
    }


def a_flag(fid: str, key: str, start: str, *, status: str = "active", code: str = ELIGIBLE) -> Json:
    return {
        "resourceType": "Flag",
        "id": fid,
        "status": status,
        "code": {"coding": [{"system": FLAG_SYSTEM, "code": code}]},
        "subject": {"reference": f"Patient/{key}"},
        "period": {"start": start},
        "author": {"identifier": {"system": ODS, "value": HERE}},
        "extension": [{"url": CRITERION_EXTENSION, "valueCode": "two-admissions-two-ltcs"}],
    }


def a_stay(eid: str, key: str, end: str | None, *, status: str = "finished", contact: bool = False) -> Json:
    stay: Json = {
        "resourceType": "Encounter",
        "id": eid,
        "status": status,
        "class": {"code": "IMP"},
        "subject": {"reference": f"Patient/{key}"},
        "serviceProvider": {"identifier": {"system": ODS, "value": "RXX"}},
        "period": {"start": "2026-11-01T09:30:00+00:00", **({"end": end} if end else {})},
    }
    if contact:
        stay["type"] = [{"coding": [{"system": CONTACT_SYSTEM, "code": "face-to-face"}]}]
    return stay


def a_task(tid: str, key: str, *, status: str = "in-progress", overdue: bool = True, due: str = "2026-11-20") -> Json:
    task: Json = {
        "resourceType": "Task",
        "id": tid,
        "status": status,
        "intent": "order",
        "code": {"coding": [{"system": TASK_SYSTEM, "code": "first-contact", "display": "First contact"}]},
        "for": {"reference": f"Patient/{key}"},
        "owner": {"display": "PIC team"},
        "restriction": {"period": {"end": due}},
    }
    if overdue:
        task["businessStatus"] = {"coding": [{"system": BUSINESS_STATUS_SYSTEM, "code": "overdue"}]}
    return task


def refs(items: tuple[Any, ...]) -> list[str]:
    return [i.reference for i in items]


def test_referrals_are_those_authored_in_the_seven_days_before_the_meeting_day() -> None:
    resources = [
        a_patient("p1"),
        a_referral("too-early", "p1", "2026-11-18T23:59:59+00:00"),
        a_referral("first-instant", "p1", "2026-11-19T00:00:00+00:00"),
        a_referral("date-only-first-day", "p1", "2026-11-19"),
        a_referral("last-instant", "p1", "2026-11-25T23:59:59Z"),
        a_referral("meeting-day", "p1", "2026-11-26T00:00:00Z"),
        a_referral("date-only-meeting-day", "p1", "2026-11-26"),
        a_referral("declined", "p1", "2026-11-20T10:00:00+00:00", status="revoked"),
        a_referral("error", "p1", "2026-11-20T10:00:00+00:00", status="entered-in-error"),
    ]

    found = agenda(HERE, MEETING, resources)

    assert refs(found.referrals) == [
        "ServiceRequest/date-only-first-day",
        "ServiceRequest/first-instant",
        "ServiceRequest/declined",
        "ServiceRequest/last-instant",
    ]
    assert found.window == (date(2026, 11, 19), date(2026, 11, 25))
    first = found.referrals[0]
    assert (first.person_key, first.name, first.nhs_number) == ("p1", "Jane SMITH", "9434765919")
    assert first.what == "Referral from Age UK Croydon: lives alone, two falls"
    assert found.referrals[2].what.endswith("[revoked]")


def test_a_referral_says_what_became_of_it_so_the_meeting_does_not_discuss_it_again() -> None:
    def answered(id_: str, outcome: str, status: str = "active") -> Json:
        referral = a_referral(id_, "p1", "2026-11-20T10:00:00+00:00", status=status)
        referral["extension"] = [*referral.get("extension", []), {"url": OUTCOME_EXTENSION, "valueCode": outcome}]
        return referral

    resources = [
        a_patient("p1"),
        answered("taken", "accepted"),
        answered("said-no", "declined", "revoked"),
        a_referral("waiting", "p1", "2026-11-21T10:00:00+00:00"),
    ]

    said = {i.reference.removeprefix("ServiceRequest/"): i.what for i in agenda(HERE, MEETING, resources).referrals}

    assert said["taken"].endswith("[accepted]") and said["said-no"].endswith("[declined]")
    assert not said["waiting"].endswith("]"), said["waiting"]


def test_the_window_is_in_uk_local_time_across_the_clocks_going_forward() -> None:
    # meeting Thu 2 April 2027; BST from 28 March: the window ends 2027-04-01T23:00Z, starts 2027-03-26T00:00Z
    resources = [
        a_patient("p1"),
        a_referral("before", "p1", "2027-03-25T23:59:00Z"),
        a_referral("start", "p1", "2027-03-26T00:00:00Z"),
        a_referral("late-wednesday-utc", "p1", "2027-04-01T22:59:00Z"),
        a_referral("thursday-00-30-bst", "p1", "2027-04-01T23:30:00Z"),
    ]

    found = agenda(HERE, date(2027, 4, 2), resources)

    assert refs(found.referrals) == ["ServiceRequest/start", "ServiceRequest/late-wednesday-utc"]
    assert local_day("2027-04-01T23:30:00Z") == date(2027, 4, 2)
    assert local_day("2026-11-19") == date(2026, 11, 19)
    assert local_day("2026-11") is None


def test_only_people_registered_with_the_practice_are_on_its_agenda() -> None:
    practice = {"resourceType": "Organization", "id": "org1", "name": "Malton Surgery"}
    practice["identifier"] = [{"system": ODS, "value": HERE}]
    resources = [
        practice,
        a_patient("ours-by-identifier"),
        a_patient("ours-by-reference", by="Organization/org1"),
        a_patient("theirs", THERE),
        a_patient("unknown-organization", by="Organization/not-held"),
        *(
            a_referral(f"r-{k}", k, "2026-11-20T09:00:00Z")
            for k in ("ours-by-identifier", "ours-by-reference", "theirs", "unknown-organization", "no-patient")
        ),
    ]

    found = agenda(HERE, MEETING, resources)

    assert found.people() == ["ours-by-identifier", "ours-by-reference"]
    assert found.practice_name == "Malton Surgery"
    assert agenda(THERE, MEETING, resources).people() == ["theirs"]


def test_practice_codes_read_the_identifier_and_the_referenced_organization() -> None:
    org = {"resourceType": "Organization", "id": "o", "identifier": [{"system": ODS, "value": THERE}]}
    patient = a_patient("p1")
    patient["generalPractitioner"].append({"reference": "Organization/o"})

    assert practice_codes(patient, {"Organization/o": org}) == {HERE, THERE}
    assert practice_codes({"resourceType": "Patient", "id": "p2"}, {}) == set()
    assert practice_reference(HERE).startswith("Organization/")


def test_newly_eligible_are_active_case_list_flags_started_in_the_window() -> None:
    resources = [
        a_patient("p1"),
        a_flag("new", "p1", "2026-11-24"),
        a_flag("old", "p1", "2026-11-18"),
        a_flag("withdrawn", "p1", "2026-11-24", status="inactive"),
        a_flag("other-flag", "p1", "2026-11-24", code="something-else"),
    ]

    found = agenda(HERE, MEETING, resources)

    assert refs(found.eligible) == ["Flag/new"]
    assert found.eligible[0].what == "Meets the case-finding criteria (two-admissions-two-ltcs)"
    assert found.eligible[0].when == "2026-11-24"


def test_recent_discharges_are_finished_hospital_stays_ending_in_the_window() -> None:
    resources = [
        a_patient("p1"),
        a_stay("home", "p1", "2026-11-22T11:00:00+00:00"),
        a_stay("long-ago", "p1", "2026-11-10T11:00:00+00:00"),
        a_stay("still-in", "p1", None, status="in-progress"),
        a_stay("a-visit", "p1", "2026-11-22T11:00:00+00:00", contact=True),
        a_stay("cancelled", "p1", "2026-11-22T11:00:00+00:00", status="cancelled"),
    ]

    found = agenda(HERE, MEETING, resources)

    assert refs(found.discharges) == ["Encounter/home"]
    assert found.discharges[0].what == "Discharged from RXX (inpatient)"


def test_overdue_tasks_are_open_tasks_marked_overdue_whatever_their_age() -> None:
    resources = [
        a_patient("p1"),
        a_task("late", "p1", due="2026-11-20"),
        a_task("very-late", "p1", due="2026-09-01", status="requested"),
        a_task("done", "p1", status="completed"),
        a_task("dropped", "p1", status="cancelled"),
        a_task("on-time", "p1", overdue=False),
    ]

    found = agenda(HERE, MEETING, resources)

    assert refs(found.overdue) == ["Task/very-late", "Task/late"]
    assert found.overdue[1].what == "First contact, owner PIC team [in-progress]"


def test_withheld_people_are_counted_not_shown_and_withheld_items_dropped() -> None:
    resources = [
        a_patient("shown"),
        a_patient("hidden", nhs="9990000018"),
        a_referral("r1", "shown", "2026-11-20T09:00:00Z"),
        a_task("t1", "shown"),
        a_referral("r2", "hidden", "2026-11-20T09:00:00Z"),
        a_flag("f2", "hidden", "2026-11-20"),
    ]
    full = agenda(HERE, MEETING, resources)
    denied = {"Patient/hidden", "Task/t1"}

    shown = withhold(full, lambda ref: ref not in denied)

    assert refs(shown.items) == ["ServiceRequest/r1"]
    assert (shown.withheld_people, shown.withheld_items) == (1, 3)
    assert sorted(f"{r['resourceType']}/{r['id']}" for r in disclosed(full, resources)) == [
        "Flag/f2",
        "Patient/hidden",
        "Patient/shown",
        "ServiceRequest/r1",
        "ServiceRequest/r2",
        "Task/t1",
    ]


def test_the_agenda_as_a_fhir_list_is_valid_r4_with_one_flagged_entry_per_item() -> None:
    resources = [
        a_patient("p1"),
        a_referral("r1", "p1", "2026-11-20T09:00:00Z"),
        a_flag("f1", "p1", "2026-11-21"),
        a_stay("e1", "p1", "2026-11-22T11:00:00+00:00"),
        a_task("t1", "p1"),
    ]
    shown = withhold(agenda(HERE, MEETING, resources), lambda ref: ref != "Task/t1")

    listed = to_fhir_list(shown)

    FhirList.model_validate(listed)
    assert (listed["status"], listed["mode"], listed["date"]) == ("current", "snapshot", "2026-11-26")
    assert [(e["item"]["reference"], e["flag"]["coding"][0]["code"]) for e in listed["entry"]] == [
        ("ServiceRequest/r1", "new-referral"),
        ("Flag/f1", "newly-eligible"),
        ("Encounter/e1", "recent-discharge"),
    ]
    assert all(e["flag"]["coding"][0]["system"] == SECTION_SYSTEM for e in listed["entry"])
    assert listed["note"] == [{"text": "0 person(s) and 1 item(s) withheld under the information-sharing policy"}]
    assert "subject" not in listed and "encounter" not in listed
    assert to_fhir_list(shown)["id"] == listed["id"]
    assert event_id(listed) == event_id(to_fhir_list(shown)) != event_id(to_fhir_list(agenda(HERE, MEETING, [])))


@pytest.mark.parametrize("withheld", [False, True])
def test_an_empty_agenda_is_a_valid_empty_list_saying_why(withheld: bool) -> None:
    resources = [a_patient("p1"), a_referral("r1", "p1", "2026-11-20T09:00:00Z")]
    full = agenda(HERE, date(2026, 1, 1) if not withheld else MEETING, resources)

    listed = to_fhir_list(withhold(full, lambda ref: False))

    FhirList.model_validate(listed)
    assert "entry" not in listed
    assert listed["emptyReason"]["coding"][0]["code"] == ("withheld" if withheld else "nilknown")


def test_items_say_what_the_record_says_and_tolerate_what_it_lacks() -> None:
    nameless = {
        "resourceType": "Patient",
        "id": "p2",
        "generalPractitioner": [{"identifier": {"system": ODS, "value": HERE}}],
    }
    referral = a_referral("r1", "p1", "2026-11-20T09:00:00Z")
    referral["extension"] = [
        {"url": SOURCE_EXTENSION, "valueCodeableConcept": {"coding": [{"system": "x", "code": "huddle"}]}}
    ]
    vague = a_referral("r2", "p2", "2026-11")  # a partial date is no day of any week
    home = a_stay("e1", "p1", "2026-11-22T11:00:00+00:00")
    home["hospitalization"] = {"dischargeDisposition": {"coding": [{"code": "19"}], "text": "19"}}
    care_home = a_stay("e2", "p2", "2026-11-22T12:00:00+00:00")
    care_home["hospitalization"] = {"dischargeDisposition": {"text": "care home"}}
    undated = a_task("t1", "p2", due="")
    undated.pop("owner")

    found = agenda(HERE, MEETING, [a_patient("p1"), nameless, referral, vague, home, care_home, undated])

    assert [i.what for i in found.referrals] == ["Referral from Age UK Croydon (huddle): lives alone, two falls"]
    assert [i.what for i in found.discharges] == [
        "Discharged from RXX (inpatient) to destination 19",
        "Discharged from RXX (inpatient) to care home",
    ]
    assert [(i.name, i.nhs_number, i.what, i.when) for i in found.overdue] == [
        (None, None, "First contact [in-progress]", "")
    ]
    assert display_name({"name": [{"text": "Jane Smith"}, {"use": "official", "family": "SMITH"}]}) == "SMITH"
    assert display_name({"name": [{"text": "Jane Smith"}]}) == "Jane Smith"


def test_the_page_escapes_whatever_the_record_holds() -> None:
    from datetime import UTC, datetime

    from hub.web.views import render_page

    patient = a_patient("p1")
    patient["name"] = [{"family": "<script>alert(1)</script>", "given": ["Jane"]}]
    referral = a_referral("r1", "p1", "2026-11-20T09:00:00Z")
    referral["reasonCode"] = [{"text": "falls & <b>frailty</b>"}]

    html = render_page(
        agenda(HERE, MEETING, [patient, referral]), generated=datetime(2026, 11, 25, 9, tzinfo=UTC), viewer="<u>x</u>"
    )

    assert "<script>alert" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "falls &amp; &lt;b&gt;frailty&lt;/b&gt;" in html and "<u>x</u>" not in html
    assert html.count("<section ") == 4 and "@media print" in html
