"""`POST /fhir/ServiceRequest/{id}/$withdraw` over a real socket (the real app on a real SQLite record;
Kafka a list, whose events the test applies to the record and the rules engine as the consumers
would): a council that referred over the API withdraws its own referral, nobody else's; the referral is
revoked and its triage and first-visit tasks cancelled; sent again it changes nothing; a referral
ended already is not withdrawn, nor one the service has accepted (the referrer contacts the service)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from hub.bootstrap import build
from hub.core.ports import Json
from hub.core.tasks import Engine, new_state
from hub.rules import load_rules
from hub.settings import Settings
from schemas.events import coordination as co
from tests.integration.test_inputs_coordination_api import Hub, bearer, coordinator, referral, served_hub

pytestmark = pytest.mark.timeout(60)
COUNCIL, OTHER_COUNCIL = "E10000023", "E10000099"


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    with served_hub(build(Settings(data_dir=tmp_path_factory.mktemp("withdraw-api")))) as live:
        yield live


@pytest.fixture
def http(hub: Hub) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=hub.url, timeout=10) as client:
        yield client


def council_refers(hub: Hub, http: httpx.Client, nhs: str, ref: str) -> str:
    body = referral(nhs, "adult-social-care", identifier=[{"system": f"urn:council:{COUNCIL}", "value": ref}])
    made = http.post("/fhir/ServiceRequest", json=body, headers=bearer(hub, COUNCIL, "system"))
    assert made.status_code == 201, made.text
    hub.record()
    return str(made.json()["id"])


def withdraw(
    hub: Hub, http: httpx.Client, rid: str, org: str = COUNCIL, role: str = "system", at: str | None = "2026-11-20"
) -> httpx.Response:
    said = [{"name": "reason", "valueString": "Moved out of the area"}]
    body = {"resourceType": "Parameters", "parameter": said + ([{"name": "at", "valueDateTime": at}] if at else [])}
    return http.post(f"/fhir/ServiceRequest/{rid}/$withdraw", json=body, headers=bearer(hub, org, role))


def issue(response: httpx.Response) -> Json:
    assert response.json()["resourceType"] == "OperationOutcome"
    return dict(response.json()["issue"][0])


def engine_tasks(hub: Hub, person: str) -> dict[str, str]:
    """rule -> status of the person's tasks, the published events run through the shipped rules."""
    engine, state = Engine(load_rules()), new_state()
    for event in hub.events():
        if event.subject == person:
            engine.handle(state, event)
    return {t["rule"]: t["status"] for t in state["tasks"].values()}


def outcome_of(request: dict[str, Any]) -> str:
    (said,) = [e["valueCode"] for e in request["extension"] if e["url"] == co.OUTCOME_EXTENSION]
    return str(said)


def test_a_council_withdraws_its_own_referral_and_nobody_elses(hub: Hub, http: httpx.Client) -> None:
    rid = council_refers(hub, http, "9434765919", "WCC-1")
    before = len(hub.published)

    for org, role in ((OTHER_COUNCIL, "system"), ("Y00001", "clinician")):
        refused = withdraw(hub, http, rid, org, role)
        assert refused.status_code == 403, refused.text
        assert issue(refused)["expression"] == ["ServiceRequest.requester"]
        assert f"was not sent by {org}" in issue(refused)["diagnostics"]
    assert withdraw(hub, http, rid, COUNCIL, "auditor").status_code == 403
    assert withdraw(hub, http, "no-such-referral").status_code == 404
    assert len(hub.published) == before  # nothing refused reached the log

    withdrawn = withdraw(hub, http, rid)
    assert withdrawn.status_code == 200, withdrawn.text
    assert (withdrawn.json()["status"], outcome_of(withdrawn.json())) == ("revoked", "withdrawn")
    (event,) = hub.events()[before:]
    assert (event.type, event.source, event.time.isoformat()) == (
        co.REFERRAL_OUTCOME.type,
        f"urn:ods:{COUNCIL}",
        "2026-11-20T00:00:00+00:00",
    )
    hub.record()
    stored = hub.services.reader.read("ServiceRequest", rid)
    assert stored is not None and stored["status"] == "revoked"
    assert stored["note"] == [{"text": "Moved out of the area"}]
    assert engine_tasks(hub, event.subject) == {"referral-triage": "cancelled", "first-visit": "cancelled"}

    again = withdraw(hub, http, rid)
    assert (again.status_code, again.json()["status"]) == (200, "revoked")
    assert len(hub.published) == before + 1  # sent again: nothing new
    for command in ("$accept", "$decline"):
        params = {"resourceType": "Parameters", "parameter": [{"name": "coordinator", "valueString": "c1"}]}
        decided = http.post(f"/fhir/ServiceRequest/{rid}/{command}", json=params, headers=coordinator(hub))
        assert decided.status_code == 409, decided.text
        assert "was withdrawn by its referrer" in issue(decided)["diagnostics"]


def test_a_referral_declined_already_is_not_withdrawn(hub: Hub, http: httpx.Client) -> None:
    rid = council_refers(hub, http, "9990000018", "WCC-2")
    declined = http.post(
        f"/fhir/ServiceRequest/{rid}/$decline", json={"resourceType": "Parameters"}, headers=coordinator(hub)
    )
    assert declined.status_code == 200, declined.text
    hub.record()

    refused = withdraw(hub, http, rid)
    assert refused.status_code == 409, refused.text
    assert issue(refused)["expression"] == ["ServiceRequest.status"]
    assert issue(refused)["diagnostics"].startswith(f"ServiceRequest/{rid} was declined already (status revoked)")


def test_a_referral_accepted_already_is_not_withdrawn_and_the_referrer_is_told_to_contact_the_service(
    hub: Hub, http: httpx.Client
) -> None:
    rid = council_refers(hub, http, "9990000026", "WCC-3")
    params = {"resourceType": "Parameters", "parameter": [{"name": "coordinator", "valueString": "c1"}]}
    accepted = http.post(f"/fhir/ServiceRequest/{rid}/$accept", json=params, headers=coordinator(hub))
    assert accepted.status_code == 201, accepted.text
    episode = accepted.json()["id"]
    hub.record()
    before = len(hub.published)

    refused = withdraw(hub, http, rid, at=None)  # now: after the accept
    assert refused.status_code == 409, refused.text
    assert issue(refused)["expression"] == ["ServiceRequest.status"]
    assert issue(refused)["diagnostics"].startswith(
        f"ServiceRequest/{rid} was accepted by the service, onto coordinator c1's caseload (EpisodeOfCare/{episode})"
    )
    assert "contact the service" in issue(refused)["diagnostics"]
    assert len(hub.published) == before  # nothing withdrawn
    stored = hub.services.reader.read("ServiceRequest", rid)
    assert stored is not None and (stored["status"], outcome_of(stored)) == ("active", "accepted")
    person = str(stored["subject"]["reference"]).removeprefix("Patient/")
    assert engine_tasks(hub, person) == {
        "referral-triage": "completed",  # by the accept
        "first-visit": "requested",  # still the service's to make
        "review-6-weeks": "requested",
        "review-12-weeks": "requested",
    }
