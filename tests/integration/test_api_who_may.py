"""Who may do what over the API, over a real socket (the real app over a real SQLite record; Kafka a
list, as in test_inputs_coordination_api):

* the coordination service accepts and declines only referrals addressed to it (or to nobody in
  particular): one addressed to adult social care is refused 403 without its content, and publishes
  nothing;
* an auditor reads; it does not refer;
* a person's consent is recorded by a role that cares for people, at an organisation some sharing
  agreement in force names; anyone else is refused 403 whether or not the person is known here (a
  201 or 404 would tell them);
* the disclosure ledger (AuditEvent) is read by auditors of an organisation an agreement in force
  names for audit.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest

from hub.bootstrap import build
from hub.settings import Settings
from tests.builders import an_agreement, an_objection
from tests.integration.test_inputs_coordination_api import Hub, bearer, command, refer, referral, referred, served_hub

pytestmark = pytest.mark.timeout(60)
ODS = "https://fhir.nhs.uk/Id/ods-organization-code"
SOCIAL_CARE = "E10000023"


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    services = build(Settings(data_dir=tmp_path_factory.mktemp("who-may")))
    # (loaded before the first request: the policy reads agreements again only after a second)
    services.agreements.load(an_agreement("Y00001", SOCIAL_CARE), at=datetime.now(UTC))
    services.agreements.load(an_agreement("Y00001", "Y0AUD", id="audit", purposes=("audit",)), at=datetime.now(UTC))
    with served_hub(services) as live:
        yield live


@pytest.fixture
def http(hub: Hub) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=hub.url, timeout=10) as client:
        yield client


def test_a_referral_to_another_organisation_is_not_the_services_to_accept_or_decline(
    hub: Hub, http: httpx.Client
) -> None:
    to_social_care = [{"identifier": {"system": ODS, "value": SOCIAL_CARE}}]
    made = referred(hub, http, "9990002010", performer=to_social_care, note=[{"text": "SECRET: a private reason"}])
    sent = len(hub.published)

    for operation, values in (("$decline", {"reason": "not for us"}), ("$accept", {"coordinator": "c-ann"})):
        refused = command(hub, http, f"/fhir/ServiceRequest/{made['id']}/{operation}", **values)

        assert refused.status_code == 403, refused.text
        assert refused.json()["resourceType"] == "OperationOutcome"
        assert "not addressed to" in refused.text
        assert "SECRET" not in refused.text and "9990002010" not in refused.text
    assert len(hub.published) == sent
    stored = hub.services.reader.read("ServiceRequest", made["id"])
    assert stored is not None and stored["status"] == "active"

    # one addressed to the service (as a referral naming no one is) is still the service's to decline
    ours = referred(hub, http, "9990002029")
    declined = command(hub, http, f"/fhir/ServiceRequest/{ours['id']}/$decline", reason="moved away")
    assert declined.status_code == 200, declined.text


def test_an_auditor_does_not_refer(hub: Hub, http: httpx.Client) -> None:
    sent = len(hub.published)

    refused = http.post(
        "/fhir/ServiceRequest", json=referral("9990002037", "gp"), headers=bearer(hub, "Y0AUD", "auditor")
    )

    assert refused.status_code == 403, refused.text
    assert "auditor" in refused.json()["issue"][0]["diagnostics"]
    assert len(hub.published) == sent
    refer(hub, http, "9990002037", "gp")  # a clinician does


def test_consent_is_recorded_by_those_caring_for_people_and_refused_alike_to_anyone_else(
    hub: Hub, http: httpx.Client
) -> None:
    referred(hub, http, "9990002045")  # a person the record knows
    known, unknown = an_objection("9990002045", "Y00009"), an_objection("9990002053", "Y00009")
    sent = len(hub.published)

    for who in (("Y00001", "auditor"), ("Y00099", "coordinator"), ("Y00099", "clinician")):
        answers = [http.post("/fhir/Consent", json=c, headers=bearer(hub, *who)) for c in (known, unknown)]

        assert [a.status_code for a in answers] == [403, 403], (who, [a.text for a in answers])
        assert answers[0].json() == answers[1].json()  # nothing told about who is known here
    assert len(hub.published) == sent

    made = http.post("/fhir/Consent", json=known, headers=bearer(hub, "Y00001", "clinician"))
    assert made.status_code == 201, made.text
    assert http.post("/fhir/Consent", json=unknown, headers=bearer(hub, SOCIAL_CARE, "coordinator")).status_code == 404
    assert len(hub.published) == sent + 1


def test_the_disclosure_ledger_is_read_by_auditors_of_an_organisation_agreed_for_audit(
    hub: Hub, http: httpx.Client
) -> None:
    made = referred(hub, http, "9990002061")
    person = made["subject"]["reference"].removeprefix("Patient/")
    assert http.get(f"/fhir/Patient/{person}", headers=bearer(hub, "Y00001", "clinician")).status_code == 200

    outsider = http.get("/fhir/AuditEvent", params={"patient": person}, headers=bearer(hub, "Y00099", "auditor"))
    party = http.get("/fhir/AuditEvent", params={"patient": person}, headers=bearer(hub, SOCIAL_CARE, "auditor"))
    agreed = http.get("/fhir/AuditEvent", params={"patient": person}, headers=bearer(hub, "Y0AUD", "auditor"))

    assert outsider.status_code == 403, outsider.text
    assert "for audit" in outsider.json()["issue"][0]["diagnostics"]
    assert party.status_code == 403, party.text  # a party, but not for audit
    assert agreed.status_code == 200, agreed.text
    assert agreed.json()["total"] >= 1


def test_a_contact_answers_only_the_services_own_referrals_about_that_person(hub: Hub, http: httpx.Client) -> None:
    to_social_care = [{"identifier": {"system": ODS, "value": SOCIAL_CARE}}]
    theirs = referred(hub, http, "9990002088", performer=to_social_care)
    ours, someone_elses = referred(hub, http, "9990002096"), referred(hub, http, "9990002118")
    person = theirs["subject"]["reference"].removeprefix("Patient/")
    mine = ours["subject"]["reference"].removeprefix("Patient/")
    sent = len(hub.published)

    def contact(patient: str, referral: str) -> httpx.Response:
        path = f"/fhir/Patient/{patient}/$record-contact"
        return command(hub, http, path, kind="face-to-face", referral=referral, at="2026-11-09T10:00:00Z")

    not_ours = contact(person, theirs["id"])
    other_person = contact(mine, someone_elses["id"])

    assert not_ours.status_code == 403, not_ours.text
    assert "authoredOn" not in not_ours.text and theirs["authoredOn"][:10] not in not_ours.text
    assert other_person.status_code == 400, other_person.text
    assert "about another person" in other_person.json()["issue"][0]["diagnostics"]
    assert len(hub.published) == sent
    made = command(hub, http, f"/fhir/Patient/{mine}/$record-contact", kind="face-to-face", referral=ours["id"])
    assert made.status_code == 201, made.text


def test_an_auditor_is_not_given_ledger_entries_edited_in_place(tmp_path_factory: pytest.TempPathFactory) -> None:
    import sqlalchemy as sa

    from hub.store.tables import disclosure_ledger as ledger

    services = build(Settings(data_dir=tmp_path_factory.mktemp("ledger-edited")))
    services.agreements.load(an_agreement("Y00001", "Y0AUD", id="audit", purposes=("audit",)), at=datetime.now(UTC))
    with served_hub(services) as hub, httpx.Client(base_url=hub.url, timeout=10) as http:
        person = referred(hub, http, "9990002061")["subject"]["reference"].removeprefix("Patient/")
        assert http.get(f"/fhir/Patient/{person}", headers=bearer(hub, "Y00001", "clinician")).status_code == 200
        auditor = bearer(hub, "Y0AUD", "auditor")
        before = http.get("/fhir/AuditEvent", params={"patient": person}, headers=auditor)
        assert before.status_code == 200, before.text
        with services.engine.begin() as conn:  # the read's permit made to read as a denial, hash left alone
            seq, body = conn.execute(
                sa.select(ledger.c.seq, ledger.c.body).where(ledger.c.person_key == person).order_by(ledger.c.seq)
            ).first()
            conn.execute(sa.update(ledger).where(ledger.c.seq == seq).values(body=body | {"decision": "deny"}))
        edited = http.get("/fhir/AuditEvent", params={"patient": person}, headers=auditor)
    assert edited.status_code == 500, edited.text
    issue = edited.json()["issue"][0]
    assert issue["code"] == "exception"
    assert issue["diagnostics"].startswith(f"the disclosure ledger is broken at entry {seq}: entry {seq} was altered")
