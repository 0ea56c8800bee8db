"""Consents and derived data over the API, over a real socket (the real app over a real SQLite record;
Kafka a list, as in test_inputs_coordination_api):

* a Consent in FHIR's usual shape (a permit with a nested deny naming the council) is taken, and the
  council then reads nothing of the person, the Consent included; their own services still do;
* a council named on the hub's local-authority system is that council, not everyone;
* a literal Organization/<id> recipient is taken only when the hub knows that organisation;
* a Consent the hub would not enforce as written is refused 400, naming the element;
* a Task the coordination service derives from a VCSE referral is withheld, in reads and searches,
  from a council no agreement shares the referral with.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from adapters.referrals.to_fhir import LOCAL_AUTHORITY_SYSTEM
from hub.bootstrap import build
from hub.core.ports import RecordEvent
from hub.core.record import apply_events
from hub.settings import Settings
from schemas.events import coordination as co
from tests.builders import an_agreement
from tests.integration.test_inputs_coordination_api import Hub, bearer, referral, served_hub

pytestmark = pytest.mark.timeout(60)
COUNCIL, GP, VCSE = "E10000023", "Y00001", "VCS001"
ODS_SYSTEM = "https://fhir.nhs.uk/Id/ods-organization-code"
EVERYTHING = ("demographics", "encounters", "referrals", "tasks", "care-plans", "provenance", "consents")


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    services = build(Settings(data_dir=tmp_path_factory.mktemp("consent-provisions")))
    pic = services.rules.rules.service.ods
    now = datetime.now(UTC)
    services.agreements.load(an_agreement(GP, pic, COUNCIL, id="gp-pic-council", categories=EVERYTHING), at=now)
    services.agreements.load(an_agreement(VCSE, pic, id="vcse-pic", categories=EVERYTHING), at=now)
    with served_hub(services) as live:
        yield live


@pytest.fixture
def http(hub: Hub) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=hub.url, timeout=10) as client:
        yield client


def pic(hub: Hub) -> str:
    return hub.services.rules.rules.service.ods


def actor(code: str, system: str = ODS_SYSTEM) -> dict[str, Any]:
    role = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]}
    return {"role": role, "reference": {"identifier": {"system": system, "value": code}}}


def consent(nhs: str, provision: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Consent",
        "status": "active",
        "scope": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]
        },
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"identifier": {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs}},
        "provision": provision,
    }


def referred_by(hub: Hub, http: httpx.Client, org: str, nhs: str) -> dict[str, Any]:
    made = http.post("/fhir/ServiceRequest", json=referral(nhs, "gp"), headers=bearer(hub, org, "clinician"))
    assert made.status_code == 201, made.text
    hub.record()
    return dict(made.json())


def person_of(made: dict[str, Any]) -> str:
    return str(made["subject"]["reference"]).removeprefix("Patient/")


def recorded(hub: Hub, http: httpx.Client, body: dict[str, Any]) -> httpx.Response:
    answer = http.post("/fhir/Consent", json=body, headers=bearer(hub, GP, "clinician"))
    hub.record()
    return answer


def test_a_nested_deny_naming_the_council_is_taken_and_the_council_reads_nothing_of_the_person(
    hub: Hub, http: httpx.Client
) -> None:
    person = person_of(referred_by(hub, http, GP, "9992553413"))
    council = bearer(hub, COUNCIL, "coordinator")
    assert http.get(f"/fhir/Patient/{person}", headers=council).status_code == 200

    made = recorded(
        hub, http, consent("9992553413", {"type": "permit", "provision": [{"type": "deny", "actor": [actor(COUNCIL)]}]})
    )

    assert made.status_code == 201, made.text
    assert http.get(f"/fhir/Patient/{person}", headers=council).status_code == 403
    assert http.get(f"/fhir/Patient/{person}/$everything", headers=council).status_code == 403
    assert http.get(f"/fhir/Consent/{made.json()['id']}", headers=council).status_code == 403
    assert (
        http.get(f"/fhir/Patient/{person}/$everything", headers=bearer(hub, pic(hub), "coordinator")).status_code == 200
    )


def test_a_council_named_on_the_local_authority_system_is_that_council_and_no_one_else(
    hub: Hub, http: httpx.Client
) -> None:
    person = person_of(referred_by(hub, http, GP, "9996483509"))

    made = recorded(
        hub, http, consent("9996483509", {"type": "deny", "actor": [actor(COUNCIL, LOCAL_AUTHORITY_SYSTEM)]})
    )

    assert made.status_code == 201, made.text
    assert http.get(f"/fhir/Patient/{person}", headers=bearer(hub, COUNCIL, "coordinator")).status_code == 403
    assert http.get(f"/fhir/Patient/{person}", headers=bearer(hub, pic(hub), "coordinator")).status_code == 200


@pytest.mark.parametrize(
    ("provision", "where"),
    [
        (
            {"type": "deny", "actor": [{**actor(COUNCIL), "reference": {"reference": "Organization/nowhere"}}]},
            "Consent.provision.actor[0]",
        ),
        (
            {"type": "deny", "provision": [{"type": "deny", "actor": [actor(COUNCIL)]}]},
            "Consent.provision.provision[0].type",
        ),
        ({"type": "deny", "actor": [actor(COUNCIL, "https://example.org/councils")]}, "Consent.provision.actor[0]"),
        ({"type": "deny", "actor": [actor(COUNCIL)], "purpose": [{"code": "TREAT"}]}, "Consent.provision.purpose"),
    ],
)
def test_a_consent_the_hub_would_not_enforce_as_written_is_refused_naming_the_element(
    hub: Hub, http: httpx.Client, provision: dict[str, Any], where: str
) -> None:
    referred_by(hub, http, GP, "9993164755")
    sent = len(hub.published)

    refused = http.post("/fhir/Consent", json=consent("9993164755", provision), headers=bearer(hub, GP, "clinician"))

    assert refused.status_code == 400, refused.text
    issue = refused.json()["issue"][0]
    assert where in issue["expression"], issue
    assert "not enforce" in issue["diagnostics"] or "not recorded" in issue["diagnostics"]
    assert len(hub.published) == sent


def test_a_literal_organisation_reference_the_hub_knows_is_taken_as_that_organisation(
    hub: Hub, http: httpx.Client
) -> None:
    person = person_of(referred_by(hub, http, GP, "9993953768"))
    council_org = {
        "resourceType": "Organization",
        "id": "council-org",
        "identifier": [{"system": LOCAL_AUTHORITY_SYSTEM, "value": COUNCIL}],
    }
    event = RecordEvent(
        "org-council-1", co.REFERRAL_RECEIVED.type, "urn:ods:Y00001", datetime.now(UTC), person, council_org
    )
    with hub.services.uow_factory() as uow:
        apply_events(uow, [event])
        uow.commit()
    named = {**actor(COUNCIL), "reference": {"reference": "Organization/council-org"}}

    made = recorded(hub, http, consent("9993953768", {"type": "deny", "actor": [named]}))

    assert made.status_code == 201, made.text
    assert made.json()["provision"]["actor"][0]["reference"]["identifier"] == {
        "system": LOCAL_AUTHORITY_SYSTEM,
        "value": COUNCIL,
    }
    assert http.get(f"/fhir/Patient/{person}", headers=bearer(hub, COUNCIL, "coordinator")).status_code == 403
    assert http.get(f"/fhir/Patient/{person}", headers=bearer(hub, pic(hub), "coordinator")).status_code == 200


def a_task(hub: Hub, referral_id: str, person: str) -> str:
    """A Task the coordination service derives from the referral, on the record (as the engine writes it)."""
    task = {
        "resourceType": "Task",
        "id": f"task-{referral_id}",
        "status": "requested",
        "intent": "order",
        "for": {"reference": f"Patient/{person}"},
        "focus": {"reference": f"ServiceRequest/{referral_id}"},
        "authoredOn": "2026-12-07T10:00:00+00:00",
    }
    event = RecordEvent(
        f"derived-{referral_id}", co.TASK_CREATED.type, f"urn:ods:{pic(hub)}", datetime.now(UTC), person, task
    )
    with hub.services.uow_factory() as uow:
        apply_events(uow, [event])
        uow.commit()
    return str(task["id"])


def test_a_task_derived_from_a_vcse_referral_is_withheld_from_a_council_the_referral_is_not_shared_with(
    hub: Hub, http: httpx.Client
) -> None:
    made = referred_by(hub, http, VCSE, "9990000026")
    person = person_of(made)
    task = a_task(hub, made["id"], person)
    council = bearer(hub, COUNCIL, "coordinator")
    assert http.get(f"/fhir/ServiceRequest/{made['id']}", headers=council).status_code == 403

    read = http.get(f"/fhir/Task/{task}", headers=council)
    searched = http.get("/fhir/Task", params={"patient": person}, headers=council)

    assert read.status_code == 403, read.text
    assert VCSE not in read.text
    assert searched.status_code == 200 and searched.json()["total"] == 0, searched.text
    assert http.get(f"/fhir/Task/{task}", headers=bearer(hub, pic(hub), "coordinator")).status_code == 200
    assert http.get(f"/fhir/Task/{task}", headers=bearer(hub, VCSE, "coordinator")).status_code == 200


def test_a_task_derived_from_a_referral_shared_with_the_council_is_shared_with_it(hub: Hub, http: httpx.Client) -> None:
    made = referred_by(hub, http, GP, "9990000034")
    task = a_task(hub, made["id"], person_of(made))

    assert http.get(f"/fhir/Task/{task}", headers=bearer(hub, COUNCIL, "coordinator")).status_code == 200
