"""Who sees a practice's huddle agenda, and how it words what the record holds (hub.core.huddle,
hub.core.huddle_reading, hub.web.views): another GP practice is refused before anything is read; a role
that reads nothing personal is told so, not "withheld under the policy"; discharge destinations and
referrers are words, not codes."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, cast

import pytest

from hub.core.errors import ConsentDeniedError
from hub.core.huddle import agenda, is_gp_practice, practice_reference, refusal, to_fhir_list, withheld_note
from hub.core.huddle_reading import DISCHARGE_DESTINATION, destination_text
from hub.core.policy import Decision
from hub.core.ports import RecordReader
from hub.web.views import decided_agenda, render_page
from tests.unit.test_huddle import HERE, MEETING, ODS, THERE, a_patient, a_referral, a_stay

Json = dict[str, Any]


SERVICE = "Y02345"  # a coordination service whose code is shaped as a practice's (the rules' service.ods)


@pytest.mark.parametrize(
    ("org", "practice", "refused"),
    [
        (THERE, HERE, True),  # another practice
        ("y00002", HERE, True),  # (whatever its case)
        (HERE, HERE, False),
        ("y00001", HERE, False),
        ("Y0PIC", HERE, False),  # the coordination service
        (SERVICE, HERE, False),  # the coordination service, of a practice-shaped code
        ("y02345 ", HERE, False),  # (whatever its case)
        ("U12345", HERE, False),  # a PCN, whose care coordinators attend huddles
        ("u12345", HERE, False),
        ("Y02346", HERE, True),  # another service of a practice-shaped code is taken for a practice
        ("E10000023", HERE, False),  # the council
        ("RXX", HERE, False),  # the hospital
        ("VCS01", HERE, False),  # a voluntary organisation
    ],
)
def test_only_another_gp_practice_is_refused_a_practices_agenda(org: str, practice: str, refused: bool) -> None:
    assert (refusal(org, practice, service=SERVICE) is not None) is refused
    assert is_gp_practice(org, SERVICE) is (refused or org.strip().upper() == practice)


def test_a_pcn_is_never_a_practice_and_the_service_only_where_its_code_is_given() -> None:
    assert not is_gp_practice("U12345") and refusal("U12345", HERE) is None
    assert is_gp_practice(SERVICE) and refusal(SERVICE, HERE) is not None  # (no service named)
    assert not is_gp_practice(SERVICE, "y02345") and refusal(SERVICE, HERE, "y02345") is None


class Unread:
    """A record that must not be read."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the record was read ({name}) for a refused agenda")


def test_another_practices_agenda_is_refused_before_the_record_is_read_and_the_refusal_recorded() -> None:
    said: list[str] = []

    with pytest.raises(ConsentDeniedError) as refused:
        decided_agenda(
            cast(RecordReader, Unread()),
            HERE,
            MEETING,
            lambda r: Decision("permit", ()),
            lambda judged: pytest.fail("nothing is judged"),
            viewer=(THERE, "clinician"),
            refuse=said.append,
        )

    assert refused.value.code == "forbidden"
    assert said == [refused.value.diagnostics]
    assert f"{THERE} is a GP practice, and a practice sees only its own huddle agenda" in said[0]


@pytest.mark.parametrize("org", ["U12345", SERVICE])
def test_a_pcn_and_the_coordination_service_are_decided_by_the_policy_not_refused(org: str) -> None:
    reader = cast(RecordReader, Record([a_patient("p1"), a_referral("r1", "p1", "2026-11-20T09:00:00Z")]))

    found = decided_agenda(
        reader,
        HERE,
        MEETING,
        lambda r: Decision("permit", ()),
        list,
        viewer=(org, "coordinator"),
        refuse=pytest.fail,
        service=SERVICE,
    )

    assert [i.reference for i in found.referrals] == ["ServiceRequest/r1"]


class Record:
    def __init__(self, resources: list[Json]) -> None:
        self.resources = resources

    def registered_with(self, practice_ods: str) -> list[Json]:
        return [r for r in self.resources if r["resourceType"] == "Patient"]

    def read(self, resource_type: str, id: str) -> Json | None:
        return next((r for r in self.resources if (r["resourceType"], r["id"]) == (resource_type, id)), None)

    def search_many(self, resource_type: str, patient_ids: Sequence[str]) -> list[Json]:
        return [r for r in self.resources if r["resourceType"] == resource_type]


def test_a_role_that_reads_nothing_personal_is_told_that_is_why_not_the_policy() -> None:
    reader = cast(RecordReader, Record([a_patient("p1"), a_referral("r1", "p1", "2026-11-20T09:00:00Z")]))
    deny = Decision("deny", ("the role admin has no purpose for reading personal data",))

    def shown(role: str) -> Any:
        return decided_agenda(reader, HERE, MEETING, lambda r: deny, list, viewer=(HERE, role), refuse=pytest.fail)

    admin, auditor = shown("admin"), shown("auditor")

    note = withheld_note(admin)
    assert note is not None and note.startswith("1 person(s) and 1 item(s) not shown: the admin role does not see")
    assert "clinical detail" in note and "policy" not in note
    assert "practice" not in note  # (a council's or hospital's admin is told so too: said of any organisation)
    assert note.endswith("its organisation's clinicians and coordinators may see them")
    assert note in [n["text"] for n in to_fhir_list(admin)["note"]]
    page = render_page(admin, generated=datetime(2026, 11, 25, 9, tzinfo=UTC), viewer="x")
    assert "the admin role does not see clinical detail" in page and "information-sharing policy" not in page
    # a role with a purpose, refused by the policy, is told it was the policy
    assert withheld_note(auditor) == "1 person(s) and 1 item(s) withheld under the information-sharing policy"


@pytest.mark.parametrize(
    ("concept", "said"),
    [
        ({"coding": [{"system": DISCHARGE_DESTINATION, "code": "19"}], "text": "19"}, "usual place of residence"),
        ({"coding": [{"system": DISCHARGE_DESTINATION, "code": "54"}]}, "an NHS-run care home"),
        ({"coding": [{"system": DISCHARGE_DESTINATION, "code": "79"}]}, "no destination (the patient died)"),
        ({"coding": [{"system": DISCHARGE_DESTINATION, "code": "19", "display": "Home"}]}, "Home"),
        ({"coding": [{"system": DISCHARGE_DESTINATION, "code": "19"}], "text": "Daughter's house"}, "Daughter's house"),
        ({"coding": [{"system": DISCHARGE_DESTINATION, "code": "42"}], "text": "42"}, "destination 42"),
        ({"coding": [{"code": "19"}], "text": "19"}, "destination 19"),  # (a code of no system named)
        ({"coding": [{"code": "HOME"}], "text": "HOME"}, "HOME"),
        ({"coding": []}, None),
        ({"text": "care home"}, "care home"),
        ({"text": "1"}, "destination 1"),  # (a bare code as text: PV1-36/37 the adapter did not know)
        ({"coding": [{"code": "HOME"}], "text": "42"}, "destination 42"),
        (None, None),
    ],
)
def test_a_discharge_destination_is_said_in_words(concept: Json | None, said: str | None) -> None:
    assert destination_text(concept) == said


def test_referrers_and_hospitals_are_named_as_the_record_names_their_organization() -> None:
    practice = {
        "resourceType": "Organization",
        "id": practice_reference(HERE).removeprefix("Organization/"),  # (as the hospital adapter files it)
        "identifier": [{"system": ODS, "value": HERE}],
        "name": "MALTON SURGERY",
    }
    by_practice = a_referral("r1", "p1", "2026-11-20T09:00:00Z")
    by_practice["requester"] = {"identifier": {"system": ODS, "value": HERE}}
    by_other = a_referral("r2", "p1", "2026-11-21T09:00:00Z")
    by_other["requester"] = {"identifier": {"system": ODS, "value": "RYY"}}
    by_reference = a_referral("r3", "p1", "2026-11-22T09:00:00Z")
    by_reference["requester"] = {"reference": practice_reference(HERE)}
    nameless = {"resourceType": "Organization", "id": "o2", "identifier": [{"system": ODS, "value": "RYY"}]}
    stay = a_stay("e1", "p1", "2026-11-22T11:00:00+00:00")
    stay["hospitalization"] = {"dischargeDisposition": {"coding": [{"system": DISCHARGE_DESTINATION, "code": "65"}]}}

    record = Record(
        [a_patient("p1"), practice, nameless, by_practice, by_other, by_reference, stay]
    )  # (the Patient names no Organization)
    permit = Decision("permit", ())

    found = decided_agenda(
        cast(RecordReader, record),
        HERE,
        MEETING,
        lambda r: permit,
        list,
        viewer=(HERE, "clinician"),
        refuse=pytest.fail,
    )

    assert [i.what for i in found.referrals] == [
        "Referral from MALTON SURGERY: lives alone, two falls",
        "Referral from RYY: lives alone, two falls",  # (its Organization has no name: its code)
        "Referral from MALTON SURGERY: lives alone, two falls",  # (by reference)
    ]
    assert [i.what for i in found.discharges] == [
        "Discharged from RXX (inpatient) to local authority residential accommodation"
    ]
    assert withheld_note(found) is None
    assert agenda(HERE, MEETING, [a_patient("p1"), by_practice]).referrals[0].what.startswith(f"Referral from {HERE}:")
