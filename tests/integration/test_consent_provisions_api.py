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
import sqlalchemy as sa

from adapters.referrals.to_fhir import LOCAL_AUTHORITY_SYSTEM
from hub.bootstrap import build
from hub.core.ports import RecordEvent
from hub.core.record import apply_events
from hub.settings import PolicySettings, Settings
from schemas.events import coordination as co
from schemas.events.consent import CONSENT_RECORDED
from tests.builders import an_agreement
from tests.integration.test_inputs_coordination_api import Hub, bearer, referral, served_hub

pytestmark = pytest.mark.timeout(60)
COUNCIL, GP, VCSE = "E10000023", "Y00001", "VCS001"
ODS_SYSTEM = "https://fhir.nhs.uk/Id/ods-organization-code"
EVERYTHING = ("demographics", "encounters", "referrals", "tasks", "care-plans", "provenance", "consents")


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    # The agreements are loaded once, before the API serves, so they are read once for the module: with
    # the default 1 s re-read, a search that took over a second on a loaded runner read them again in
    # the next, and the fixed-number-of-queries test counted that as a query per task (13, not 11).
    policy = PolicySettings(agreements_ttl_s=3600)
    services = build(Settings(data_dir=tmp_path_factory.mktemp("consent-provisions"), policy=policy))
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


# review of 726cc4e: what the API takes is what the record enforces, and what it holds never breaks a read

CATEGORY = "https://carehub.invalid/CodeSystem/data-category"
OPTIN = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]}
NATIONAL = {
    "coding": [{"system": "https://carehub.invalid/CodeSystem/consent-policy", "code": "national-data-opt-out"}]
}


def put(hub: Hub, id: str, type_: str, person: str, resource: dict[str, Any]) -> None:
    """A resource on the record by another way than the API (as older versions stored it)."""
    event = RecordEvent(id, type_, f"urn:ods:{GP}", datetime.now(UTC), person, resource)
    with hub.services.uow_factory() as uow:
        apply_events(uow, [event])
        uow.commit()


def test_a_recipient_code_sent_in_lower_case_is_stored_and_enforced_as_the_organisation(
    hub: Hub, http: httpx.Client
) -> None:
    person = person_of(referred_by(hub, http, GP, "9990000107"))

    made = recorded(
        hub, http, consent("9990000107", {"type": "deny", "actor": [actor(" e10000023", LOCAL_AUTHORITY_SYSTEM)]})
    )

    assert made.status_code == 201, made.text
    assert made.json()["provision"]["actor"][0]["reference"]["identifier"]["value"] == COUNCIL
    assert http.get(f"/fhir/Patient/{person}", headers=bearer(hub, COUNCIL, "coordinator")).status_code == 403
    assert http.get(f"/fhir/Patient/{person}", headers=bearer(hub, pic(hub), "coordinator")).status_code == 200


def test_a_permit_under_optin_naming_only_the_gp_is_enforced_as_only_the_gp(hub: Hub, http: httpx.Client) -> None:
    person = person_of(referred_by(hub, http, GP, "9990000115"))

    made = recorded(hub, http, consent("9990000115", {"type": "permit", "actor": [actor(GP)]}) | {"policyRule": OPTIN})

    assert made.status_code == 201, made.text
    assert http.get(f"/fhir/Patient/{person}", headers=bearer(hub, COUNCIL, "coordinator")).status_code == 403


def test_a_nested_deny_outlasting_its_permit_is_taken_and_holds_after_the_permit_ends(
    hub: Hub, http: httpx.Client
) -> None:
    person = person_of(referred_by(hub, http, GP, "9990000123"))
    nested = {"type": "deny", "actor": [actor(COUNCIL, LOCAL_AUTHORITY_SYSTEM)], "period": {"end": "2099-12"}}

    made = recorded(
        hub, http, consent("9990000123", {"type": "permit", "period": {"end": "2020"}, "provision": [nested]})
    )

    assert made.status_code == 201, made.text
    assert http.get(f"/fhir/Patient/{person}", headers=bearer(hub, COUNCIL, "coordinator")).status_code == 403


@pytest.mark.parametrize(
    ("provision", "extra", "where"),
    [
        ({"type": "deny", "actor": [actor("E-1", LOCAL_AUTHORITY_SYSTEM)]}, {}, "Consent.provision.actor[0]"),
        (
            {"type": "permit", "actor": [actor(GP)]},
            {"policyRule": {"coding": [{"system": "http://example.org/p", "code": "GP-ONLY"}]}},
            "Consent.policyRule",
        ),
        ({"type": "deny", "actor": [actor(COUNCIL)]}, {"policyRule": NATIONAL}, "Consent.provision.actor"),
        (
            {"type": "deny", "class": [{"system": CATEGORY, "code": "encounters"}]},
            {"policyRule": NATIONAL},
            "Consent.provision.class",
        ),
    ],
)
def test_a_consent_the_hub_would_not_enforce_as_written_is_refused_400(
    hub: Hub, http: httpx.Client, provision: dict[str, Any], extra: dict[str, Any], where: str
) -> None:
    referred_by(hub, http, GP, "9993164755")
    sent = len(hub.published)

    refused = http.post(
        "/fhir/Consent", json=consent("9993164755", provision) | extra, headers=bearer(hub, GP, "clinician")
    )

    assert refused.status_code == 400, refused.text
    assert where in refused.json()["issue"][0]["expression"]
    assert len(hub.published) == sent


def test_a_partial_date_period_is_taken_and_one_not_a_date_refused(hub: Hub, http: httpx.Client) -> None:
    person = person_of(referred_by(hub, http, GP, "9990000131"))
    deny = {"type": "deny", "actor": [actor(COUNCIL, LOCAL_AUTHORITY_SYSTEM)]}

    made = recorded(hub, http, consent("9990000131", deny | {"period": {"start": "2020", "end": "2099-06"}}))
    refused = http.post(
        "/fhir/Consent",
        json=consent("9990000131", deny | {"period": {"end": "2099-13"}}),
        headers=bearer(hub, GP, "clinician"),
    )

    assert made.status_code == 201, made.text
    assert http.get(f"/fhir/Patient/{person}", headers=bearer(hub, COUNCIL, "coordinator")).status_code == 403
    assert refused.status_code == 400, refused.text


def test_a_stored_consent_with_a_partial_or_unreadable_date_never_breaks_a_read(hub: Hub, http: httpx.Client) -> None:
    person = person_of(referred_by(hub, http, GP, "9990000182"))
    for n, end in enumerate(["2099-06", "soon"]):
        stored = {
            "resourceType": "Consent",
            "id": f"dated-{person}-{n}",
            "status": "active",
            "patient": {"reference": f"Patient/{person}"},
            "provision": {
                "type": "permit",
                "provision": [
                    {"type": "deny", "actor": [actor(COUNCIL, LOCAL_AUTHORITY_SYSTEM)], "period": {"end": end}}
                ],
            },
        }
        put(hub, f"dated-{person}-{n}", CONSENT_RECORDED.type, person, stored)

    assert http.get(f"/fhir/Patient/{person}", headers=bearer(hub, pic(hub), "coordinator")).status_code == 200
    assert http.get(f"/fhir/Patient/{person}", headers=bearer(hub, COUNCIL, "coordinator")).status_code == 403
    assert http.get(f"/fhir/Patient/{person}", headers=bearer(hub, GP, "clinician")).status_code == 200


def test_a_stored_consent_naming_an_organisation_only_by_reference_is_read_as_that_organisation(
    hub: Hub, http: httpx.Client
) -> None:
    person = person_of(referred_by(hub, http, GP, "9990000158"))
    hospital = {"resourceType": "Organization", "id": "ods-ryy", "identifier": [{"system": ODS_SYSTEM, "value": "RYY"}]}
    put(hub, "org-ryy", co.REFERRAL_RECEIVED.type, person, hospital)
    named = {"role": actor("RYY")["role"], "reference": {"reference": "Organization/ods-ryy", "display": "RYY"}}
    old = {
        "resourceType": "Consent",
        "id": f"old-{person}",
        "status": "active",
        "patient": {"reference": f"Patient/{person}"},
        "provision": {"type": "deny", "actor": [actor(COUNCIL, LOCAL_AUTHORITY_SYSTEM), named]},
    }
    put(hub, f"old-{person}", CONSENT_RECORDED.type, person, old)

    assert http.get(f"/fhir/Patient/{person}", headers=bearer(hub, pic(hub), "coordinator")).status_code == 200
    assert http.get(f"/fhir/Patient/{person}", headers=bearer(hub, COUNCIL, "coordinator")).status_code == 403


def test_an_organisation_reference_to_one_known_by_two_codes_is_refused_asking_which(
    hub: Hub, http: httpx.Client
) -> None:
    person = person_of(referred_by(hub, http, GP, "9990000166"))
    two = {
        "resourceType": "Organization",
        "id": "council-two-codes",
        "identifier": [{"system": ODS_SYSTEM, "value": "KCC01"}, {"system": LOCAL_AUTHORITY_SYSTEM, "value": COUNCIL}],
    }
    put(hub, "org-two-codes", co.REFERRAL_RECEIVED.type, person, two)
    named = {**actor(COUNCIL), "reference": {"reference": "Organization/council-two-codes"}}

    refused = http.post(
        "/fhir/Consent",
        json=consent("9990000166", {"type": "deny", "actor": [named]}),
        headers=bearer(hub, GP, "clinician"),
    )

    assert refused.status_code == 400, refused.text
    assert "Consent.provision.actor[0]" in refused.json()["issue"][0]["expression"]
    assert "more than one code" in refused.json()["issue"][0]["diagnostics"]


@pytest.mark.parametrize("focus", ["{id}/_history/1", "https://hub.example/fhir/{id}", "not-yet-applied"])
def test_a_task_whose_referral_reference_is_versioned_absolute_or_not_held_is_withheld_from_the_council(
    hub: Hub, http: httpx.Client, focus: str
) -> None:
    made = referred_by(hub, http, VCSE, "9990000174")
    person = person_of(made)
    reference = f"ServiceRequest/{made['id']}"
    focus_ref = focus.format(id=reference) if "{id}" in focus else f"ServiceRequest/{focus}"
    task = {
        "resourceType": "Task",
        "id": f"task-{abs(hash(focus))}",
        "status": "requested",
        "intent": "order",
        "for": {"reference": f"Patient/{person}"},
        "focus": {"reference": focus_ref},
        "authoredOn": "2026-12-07T10:00:00+00:00",
    }
    event = RecordEvent(task["id"], co.TASK_CREATED.type, f"urn:ods:{pic(hub)}", datetime.now(UTC), person, task)
    with hub.services.uow_factory() as uow:
        apply_events(uow, [event])
        uow.commit()

    assert http.get(f"/fhir/Task/{task['id']}", headers=bearer(hub, COUNCIL, "coordinator")).status_code == 403
    assert http.get(f"/fhir/Task/{task['id']}", headers=bearer(hub, pic(hub), "coordinator")).status_code == 200
    searched = http.get("/fhir/Task", params={"patient": person}, headers=bearer(hub, COUNCIL, "coordinator"))
    assert task["id"] not in searched.text


def test_a_search_reads_the_referrals_of_its_tasks_in_a_fixed_number_of_queries(hub: Hub, http: httpx.Client) -> None:
    made = referred_by(hub, http, GP, "9990000190")
    person = person_of(made)
    council = bearer(hub, COUNCIL, "coordinator")
    statements = [0]

    def count(*_: Any) -> None:
        statements[0] += 1

    def search_after(tasks: int) -> int:
        events = []
        for n in range(tasks):
            referral_id = f"sr-{person}-{n}"
            sr = {
                "resourceType": "ServiceRequest",
                "id": referral_id,
                "status": "active",
                "intent": "order",
                "subject": {"reference": f"Patient/{person}"},
            }
            task = {
                "resourceType": "Task",
                "id": f"task-{referral_id}",
                "status": "requested",
                "intent": "order",
                "for": {"reference": f"Patient/{person}"},
                "focus": {"reference": f"ServiceRequest/{referral_id}"},
            }
            events += [
                RecordEvent(referral_id, co.REFERRAL_RECEIVED.type, f"urn:ods:{GP}", datetime.now(UTC), person, sr),
                RecordEvent(task["id"], co.TASK_CREATED.type, f"urn:ods:{pic(hub)}", datetime.now(UTC), person, task),
            ]
        with hub.services.uow_factory() as uow:
            apply_events(uow, events)
            uow.commit()
        http.get("/fhir/Task", params={"patient": person}, headers=council)  # (agreements and the like, cached)
        statements[0] = 0
        found = http.get("/fhir/Task", params={"patient": person}, headers=council)
        assert found.status_code == 200 and found.json()["total"] >= tasks, found.text
        return statements[0]

    sa.event.listen(hub.services.engine, "before_cursor_execute", count)
    try:
        few, many = search_after(5), search_after(40)
    finally:
        sa.event.remove(hub.services.engine, "before_cursor_execute", count)

    assert many == few, (few, many)
