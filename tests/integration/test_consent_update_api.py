"""A person changes their mind, or an objection was recorded in error: PUT /fhir/Consent/{id} ends
it (status inactive, or entered-in-error), over a real socket (the real app over a real SQLite
record; Kafka a list, as in test_consent_provisions_api):

* an objection withholds the person from the council; PUT inactive, and the same read is permitted;
  the ledger keeps both decisions, the refusal naming the Consent's version then, and time travel
  still shows the refusal then (today's answer the permit);
* entered-in-error ends one too; only active Consents count (draft, proposed, rejected are inert);
* the update is refused as POST is (403) to a role or organisation that does not record consent,
  and 400 for an id not the URL's, another person, a status FHIR R4 does not name, 404 for no such
  Consent, 412 for an If-Match of another version;
* the same objection POSTed again is the one Consent (200), so one PUT lifts it; a permit POSTed
  over a deny does not lift it, and a new Consent that is inactive is refused, pointing to PUT.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from hub.bootstrap import build
from hub.core.identity import identities
from hub.core.policy import Asker, decide
from hub.core.timetravel import reconsider
from hub.settings import Settings
from schemas.events.consent import CONSENT_RECORDED
from tests.builders import an_agreement
from tests.integration.test_consent_provisions_api import COUNCIL, EVERYTHING, GP, actor, consent, person_of
from tests.integration.test_inputs_coordination_api import Hub, bearer, referral, served_hub

pytestmark = pytest.mark.timeout(60)
STRANGER = "Z99999"  # an organisation no sharing agreement names


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    services = build(Settings(data_dir=tmp_path_factory.mktemp("consent-update")))
    now = datetime.now(UTC)
    ods = services.rules.rules.service.ods
    services.agreements.load(an_agreement(GP, ods, COUNCIL, id="gp-pic-council", categories=EVERYTHING), at=now)
    with served_hub(services) as live:
        yield live


@pytest.fixture
def http(hub: Hub) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=hub.url, timeout=10) as client:
        yield client


def known(hub: Hub, http: httpx.Client, nhs: str) -> str:
    made = http.post("/fhir/ServiceRequest", json=referral(nhs, "gp"), headers=bearer(hub, GP, "clinician"))
    assert made.status_code == 201, made.text
    hub.record()
    return person_of(made.json())


def objection(nhs: str, to: str = COUNCIL) -> dict[str, Any]:
    return consent(nhs, {"type": "deny", "actor": [actor(to)]})


def posted(hub: Hub, http: httpx.Client, body: dict[str, Any]) -> httpx.Response:
    answer = http.post("/fhir/Consent", json=body, headers=bearer(hub, GP, "clinician"))
    hub.record()
    return answer


def put(
    hub: Hub, http: httpx.Client, body: dict[str, Any], *, org: str = GP, role: str = "clinician", **headers: str
) -> httpx.Response:
    answer = http.put(f"/fhir/Consent/{body['id']}", json=body, headers=bearer(hub, org, role) | headers)
    hub.record()
    return answer


def council_reads(hub: Hub, http: httpx.Client, person: str) -> int:
    return http.get(f"/fhir/Patient/{person}", headers=bearer(hub, COUNCIL, "coordinator")).status_code


def held(hub: Hub, id_: str) -> dict[str, Any]:
    found = hub.services.reader.read("Consent", id_)
    assert found is not None
    return found


def test_an_objection_put_inactive_lets_the_same_read_through_and_the_ledger_and_time_travel_keep_the_refusal(
    hub: Hub, http: httpx.Client
) -> None:
    person = known(hub, http, "9990000018")
    made = posted(hub, http, objection("9990000018"))
    assert made.status_code == 201, made.text
    asker = Asker(COUNCIL, "coordinator", datetime.now(UTC))
    patient = hub.services.reader.read("Patient", person)
    assert patient is not None
    before = decide(asker, patient, hub.services.policy.agreements(), hub.services.policy.consents(person))
    assert council_reads(hub, http, person) == 403

    ended = put(hub, http, made.json() | {"status": "inactive"})

    assert ended.status_code == 200, ended.text
    assert (ended.json()["id"], ended.json()["status"]) == (made.json()["id"], "inactive")
    assert hub.published[-1].type == CONSENT_RECORDED.type
    assert (held(hub, made.json()["id"])["status"], held(hub, made.json()["id"])["meta"]["versionId"]) == (
        "inactive",
        "2",
    )
    after = decide(asker, patient, hub.services.policy.agreements(), hub.services.policy.consents(person))
    assert (before.outcome, after.outcome) == ("deny", "permit")
    assert before.consents == (f"Consent/{made.json()['id']}/_history/1",)
    assert council_reads(hub, http, person) == 200
    reads = [
        e
        for e in hub.services.ledger.about(*identities(hub.services.reader, person))
        if e.body["recipient_org"] == COUNCIL
    ]
    assert [(e.body["decision"], e.body["basis"]["consents"]) for e in reads] == [
        ("deny", [f"Consent/{made.json()['id']}/_history/1"]),
        ("permit", []),
    ]
    resources = {f"Patient/{person}": patient}
    [then, now] = reconsider(
        reads,
        resources,
        hub.services.policy.agreements(),
        hub.services.policy.consents(person),
        datetime.now(UTC),
        history=hub.services.agreements.history(),
    )
    assert (then.then, then.now, then.changed) == ("deny", "permit", True)
    assert f"Consent/{made.json()['id']}/_history/1" in then.then_basis
    assert (now.then, now.now, now.changed) == ("permit", "permit", False)


def test_an_objection_put_entered_in_error_withholds_nothing_and_the_record_says_so(
    hub: Hub, http: httpx.Client
) -> None:
    person = known(hub, http, "9990000026")
    made = posted(hub, http, objection("9990000026"))
    assert council_reads(hub, http, person) == 403

    wrong = put(hub, http, made.json() | {"status": "entered-in-error"})

    assert wrong.status_code == 200, wrong.text
    assert held(hub, made.json()["id"])["status"] == "entered-in-error"
    assert council_reads(hub, http, person) == 200
    assert hub.services.policy.consents(person) == []


@pytest.mark.parametrize("status", ["draft", "proposed", "rejected", "inactive"])
def test_only_an_active_consent_counts(hub: Hub, http: httpx.Client, status: str) -> None:
    nhs = {"draft": "9990000034", "proposed": "9990000042", "rejected": "9990000050", "inactive": "9990000069"}[status]
    person = known(hub, http, nhs)
    made = posted(hub, http, objection(nhs))
    assert council_reads(hub, http, person) == 403

    changed = put(hub, http, made.json() | {"status": status})

    assert changed.status_code == 200, changed.text
    assert council_reads(hub, http, person) == 200
    back = put(hub, http, made.json() | {"status": "active"})  # (and a Consent made active again counts again)
    assert back.status_code == 200, back.text
    assert council_reads(hub, http, person) == 403


@pytest.mark.parametrize(
    ("org", "role"),
    [(GP, "auditor"), (GP, "system"), (STRANGER, "clinician")],
)
def test_an_update_from_a_role_or_organisation_that_does_not_record_consent_is_refused_403(
    hub: Hub, http: httpx.Client, org: str, role: str
) -> None:
    nhs = "9990000077"
    person = known(hub, http, nhs)
    made = posted(hub, http, objection(nhs))
    count = len(hub.published)

    refused = put(hub, http, made.json() | {"status": "inactive"}, org=org, role=role)

    assert refused.status_code == 403, refused.text
    assert len(hub.published) == count
    assert council_reads(hub, http, person) == 403


def test_an_update_of_no_consent_held_is_404(hub: Hub, http: httpx.Client) -> None:
    known(hub, http, "9990000085")
    body = objection("9990000085") | {"id": "no-such-consent", "status": "inactive"}

    assert put(hub, http, body).status_code == 404


def test_an_update_with_another_id_another_person_or_a_status_fhir_does_not_name_is_400(
    hub: Hub, http: httpx.Client
) -> None:
    person = known(hub, http, "9990000093")
    known(hub, http, "9990000107")
    made = posted(hub, http, objection("9990000093")).json()
    url = f"/fhir/Consent/{made['id']}"
    headers = bearer(hub, GP, "clinician")
    other_person = objection("9990000107") | {"id": made["id"], "status": "inactive"}

    answers = {
        "Consent.id": http.put(url, json=made | {"id": "another", "status": "inactive"}, headers=headers),
        "Consent.patient": http.put(url, json=other_person, headers=headers),
        "Consent.status": http.put(url, json=made | {"status": "withdrawn"}, headers=headers),
        "Consent.resourceType": http.put(url, json={"resourceType": "Patient", "id": made["id"]}, headers=headers),
    }

    for where, answer in answers.items():
        assert answer.status_code == 400, (where, answer.text)
        assert answer.json()["issue"][0]["expression"] == [where]
    hub.record()
    assert held(hub, made["id"])["status"] == "active"
    assert council_reads(hub, http, person) == 403


def test_an_update_naming_the_person_by_nhs_number_is_the_same_person(hub: Hub, http: httpx.Client) -> None:
    person = known(hub, http, "9990000115")
    made = posted(hub, http, objection("9990000115")).json()

    ended = put(hub, http, objection("9990000115") | {"id": made["id"], "status": "inactive"})

    assert ended.status_code == 200, ended.text
    assert ended.json()["patient"] == {"reference": f"Patient/{person}"}
    assert council_reads(hub, http, person) == 200


def test_if_match_of_another_version_is_412_and_of_the_one_held_is_taken(hub: Hub, http: httpx.Client) -> None:
    person = known(hub, http, "9990000123")
    made = posted(hub, http, objection("9990000123")).json()

    stale = put(hub, http, made | {"status": "inactive"}, **{"If-Match": 'W/"7"'})
    current = put(hub, http, made | {"status": "inactive"}, **{"If-Match": 'W/"1"'})

    assert stale.status_code == 412, stale.text
    assert stale.json()["resourceType"] == "OperationOutcome"
    assert current.status_code == 200, current.text
    assert council_reads(hub, http, person) == 200


def test_the_same_objection_posted_twice_is_one_consent_and_one_put_lifts_it(hub: Hub, http: httpx.Client) -> None:
    person = known(hub, http, "9990000131")
    first = posted(hub, http, objection("9990000131"))
    count = len(hub.published)

    again = posted(hub, http, objection("9990000131"))

    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["Location"].endswith(f"/fhir/Consent/{first.json()['id']}")
    assert len(hub.published) == count
    assert len(hub.services.reader.search("Consent", person)) == 1
    assert put(hub, http, first.json() | {"status": "inactive"}).status_code == 200
    assert council_reads(hub, http, person) == 200


def test_a_permit_posted_over_an_objection_does_not_lift_it(hub: Hub, http: httpx.Client) -> None:
    person = known(hub, http, "9990000158")
    posted(hub, http, objection("9990000158"))

    permit = posted(hub, http, consent("9990000158", {"type": "permit", "actor": [actor(COUNCIL)]}))

    assert permit.status_code == 201, permit.text
    assert council_reads(hub, http, person) == 403


@pytest.mark.parametrize("status", ["inactive", "entered-in-error", "withdrawn"])
def test_a_new_consent_that_is_not_one_fhir_starts_is_refused_400_pointing_to_put(
    hub: Hub, http: httpx.Client, status: str
) -> None:
    known(hub, http, "9990000166")
    count = len(hub.published)

    refused = posted(hub, http, objection("9990000166") | {"status": status})

    assert refused.status_code == 400, refused.text
    assert refused.json()["issue"][0]["expression"] == ["Consent.status"]
    assert ("PUT" in refused.json()["issue"][0]["diagnostics"]) is (status != "withdrawn")
    assert len(hub.published) == count
