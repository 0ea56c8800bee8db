"""A hospital's discharge summary over a real socket: the real app (uvicorn, httpx) over a real SQLite
record; Kafka a list whose events the test applies to the record as the record consumer would.

* A good document (the UK Core discharge Composition, read from shared/samples at test time, in a
  document Bundle with a Patient and an Encounter) is answered 201 and becomes one event about the
  person; applied, the record files the Composition under them, and the Patient is only a stub.
* The same document again is the same event id; once the record holds it, 200 and nothing sent.
* Bad input (an NHS number failing Mod 11, a Bundle that is not a document, a Composition of another
  type, no Patient) is 400 naming the element, nothing is sent, and the body is kept whole in the
  dead-letter store (through the hub's own refuser, hub.bootstrap, and the dead-letter consumer's
  keep_all; Kafka's dead-letter topic a list too); an auditor's token is 403, and nothing is kept.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from consumers.deadletters import keep_all
from hub.api.app import create_app
from hub.api.auth import TokenVerifier, issue_token
from hub.api.routes.coordination import CoordinationApi
from hub.bootstrap import _refuser, build
from hub.core.identity import person_key
from hub.core.ports import RecordEvent
from hub.core.record import apply_events
from hub.settings import Settings
from schemas.envelope import Envelope
from schemas.events.document import DISCHARGE_SUMMARY_RECEIVED
from schemas.events.patient import PATIENT_UPDATED
from schemas.topics import DEAD_LETTER
from tests.integration.test_inputs_coordination_api import Hub
from tests.serving import served

pytestmark = pytest.mark.timeout(60)
SAMPLES = Path(__file__).resolve().parents[3] / "shared" / "samples" / "fhir" / "uk-core"
NHS_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"
TRUST = "RR8"
NHS = "9912003888"  # UK Core Richard Smith's (valid Mod 11)


@dataclass
class Record:
    """A record on the dead-letter topic, as the dead-letter consumer reads it."""

    topic: str
    value: bytes
    key: bytes
    headers: list[tuple[str, bytes]]
    offset: int
    partition: int = 0
    timestamp: int = 0


class DeadLetterTopic:
    """Kafka as the hub's refuser publishes to it: a list of records."""

    def __init__(self) -> None:
        self.records: list[Record] = []

    async def publish(self, value: bytes, topic: str, *, key: bytes, headers: dict[str, str]) -> None:
        listed = [(name, said.encode()) for name, said in headers.items()]
        self.records.append(Record(topic, value, key, listed, len(self.records)))


@pytest.fixture(scope="module")
def kafka() -> DeadLetterTopic:
    return DeadLetterTopic()


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory, kafka: DeadLetterTopic) -> Iterator[Hub]:
    services = build(Settings(data_dir=tmp_path_factory.mktemp("discharge-api")))
    live = Hub(services)

    async def publish(envelope: Envelope) -> None:
        live.published.append(envelope)

    commands = CoordinationApi(services.reader, services.coordination, services.rules, services.secrets.key, publish)
    tokens = TokenVerifier(services.secrets.token)
    refused = _refuser(kafka, 5.0)
    app = create_app(services.reader, tokens, services.ledger, services.policy, publish, commands, refused=refused)
    try:
        with served(app, "discharge-api") as live.url:
            yield live
    finally:
        services.engine.dispose()


def kept(hub: Hub, kafka: DeadLetterTopic, since: int) -> list[dict[str, Any]]:
    """What the dead-letter store holds of the records put on the topic since `since` (kept by the
    dead-letter consumer's own keep_all)."""
    new = kafka.records[since:]
    assert all(r.topic == DEAD_LETTER.name for r in new)
    keep_all(hub.services.dead_letters, new)
    return [dict(d) for d in hub.services.dead_letters.recent(len(new))] if new else []


@pytest.fixture
def http(hub: Hub) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=hub.url, timeout=10) as client:
        yield client


def bearer(hub: Hub, role: str = "clinician", org: str = TRUST) -> dict[str, str]:
    token = issue_token(hub.services.secrets.token, org=org, role=role, now=datetime.now(UTC))
    return {"Authorization": f"Bearer {token}"}


def sample(name: str) -> dict[str, Any]:
    return dict(orjson.loads((SAMPLES / name).read_bytes()))


def document(document_id: str, nhs: str = NHS) -> dict[str, Any]:
    """A document Bundle around the UK Core discharge Composition, Patient and Encounter examples."""
    composition = sample("UKCore-Composition-Discharge-Example.json")
    patient = sample("UKCore-Patient-RichardSmith-Example.json")
    patient["identifier"] = [{"system": NHS_SYSTEM, "value": nhs}]
    encounter = sample("UKCore-Encounter-InpatientEncounter-Example.json")
    subject, stay = composition["subject"]["reference"], composition["encounter"]["reference"]
    return {
        "resourceType": "Bundle",
        "type": "document",
        "identifier": {"system": "https://trust.example/Id/documents", "value": document_id},
        "timestamp": "2021-02-12T19:05:00+00:00",
        "entry": [
            {"fullUrl": "urn:uuid:2d361270-039f-4a48-827b-ef255ff8b6c4", "resource": composition},
            {"fullUrl": subject, "resource": patient},
            {"fullUrl": stay, "resource": encounter},
        ],
    }


def send(hub: Hub, http: httpx.Client, body: dict[str, Any], role: str = "clinician") -> httpx.Response:
    return http.post("/fhir/Bundle", content=orjson.dumps(body), headers=bearer(hub, role))


def test_discharge_summary_is_published_once_and_filed_under_the_person(hub: Hub, http: httpx.Client) -> None:
    before = len(hub.published)
    body = document("doc-1")
    first = send(hub, http, body)
    assert first.status_code == 201, first.text
    person = person_key(hub.services.secrets.key, NHS, None)
    (event,) = hub.published[before:]
    assert (event.type, event.subject, event.source) == (DISCHARGE_SUMMARY_RECEIVED.type, person, f"urn:ods:{TRUST}")
    kinds = [e["resource"]["resourceType"] for e in orjson.loads(event.data)["entry"]]
    assert kinds == ["Composition", "Patient", "Encounter"]
    again = send(hub, http, body)  # before the record has it: the same event, which consumers apply once
    assert again.status_code == 201, again.text
    assert [e.id for e in hub.published[before:]] == [event.id, event.id]
    hub.record()
    letter = hub.services.reader.read("Composition", first.json()["id"])
    assert letter is not None
    assert letter["subject"]["reference"] == f"Patient/{person}"
    assert letter["custodian"]["identifier"]["value"] == TRUST
    assert letter["meta"]["source"] == f"urn:ods:{TRUST}"
    assert letter["section"][0]["text"]["div"]  # the letter's narrative is kept
    encounter_id = letter["encounter"]["reference"].removeprefix("Encounter/")
    assert hub.services.reader.read("Encounter", encounter_id)["subject"]["reference"] == f"Patient/{person}"
    patient = hub.services.reader.read("Patient", person)
    assert patient is not None and "name" not in patient  # a stub: the sample's name is not taken
    third = send(hub, http, body)
    assert third.status_code == 200, third.text
    assert third.json()["issue"][0]["code"] == "duplicate"
    assert len(hub.published) == before + 2


def test_the_documents_patient_never_replaces_what_the_hospitals_adt_said(hub: Hub, http: httpx.Client) -> None:
    """The document first, then the hospital's ADT for the person, sent earlier than the document's
    date but arriving later: the ADT's Patient stands (the document's is a stub, dated before anything)."""
    nhs = "9000000009"
    person = person_key(hub.services.secrets.key, nhs, None)
    assert send(hub, http, document("doc-adt", nhs=nhs)).status_code == 201
    hub.record()
    adt = {
        "resourceType": "Patient",
        "id": person,
        "identifier": [
            {"system": NHS_SYSTEM, "value": nhs},
            {"system": "https://fhir.nhs.uk/Id/MRN/RR8", "value": "M1"},
        ],
        "name": [{"family": "FROM-ADT"}],
    }
    said = datetime(2020, 1, 1, tzinfo=UTC)  # (before the document's date, 2021-02-12: only a stub loses to it)
    with hub.services.uow_factory() as uow:
        apply_events(uow, [RecordEvent("adt-1", PATIENT_UPDATED.type, "urn:ods:RR8", said, person, adt)])
        uow.commit()
    held = hub.services.reader.read("Patient", person)
    assert (held["name"], len(held["identifier"])) == ([{"family": "FROM-ADT"}], 2)


def test_a_changed_document_identifier_is_another_document(hub: Hub, http: httpx.Client) -> None:
    first, second = send(hub, http, document("doc-a")), send(hub, http, document("doc-b"))
    assert (first.status_code, second.status_code) == (201, 201)
    assert first.json()["id"] != second.json()["id"]


def broken(change: str) -> dict[str, Any]:
    body = document(f"bad-{change}")
    if change == "nhs-number":
        body["entry"][1]["resource"]["identifier"][0]["value"] = "9912003890"  # fails Mod 11
    elif change == "not-a-document":
        body["type"] = "collection"
    elif change == "other-type":
        body["entry"][0]["resource"]["type"]["coding"][0]["code"] = "371531000"  # Report of clinical encounter
    elif change == "no-patient":
        del body["entry"][1]
    elif change == "no-identifier":
        del body["identifier"]
        del body["entry"][0]["resource"]["identifier"]
    elif change == "not-fhir":
        body["entry"][0]["resource"]["status"] = 7
    elif change == "wrong-subject":  # (filed under the Patient sent, it was a letter about the wrong person)
        body["entry"][0]["resource"]["subject"] = {"reference": "Patient/someone-else"}
    elif change == "two-patients":
        body["entry"].append({"fullUrl": "urn:uuid:another", "resource": copy.deepcopy(body["entry"][1]["resource"])})
    elif change in ("preliminary", "entered-in-error"):
        body["entry"][0]["resource"]["status"] = change
    elif change == "encounter-status":
        body["entry"][2]["resource"]["status"] = "nonsense"
    elif change == "encounter-someone-else":
        body["entry"][2]["resource"]["subject"] = {"reference": "Patient/someone-else"}
    elif change == "stu3-type":  # (fhir.resources raised KeyError on it: a 500, nothing kept)
        body["entry"].append({"fullUrl": "urn:uuid:stu3", "resource": {"resourceType": "ProcedureRequest", "id": "p"}})
    return body


@pytest.mark.parametrize(
    ("change", "element"),
    [
        ("nhs-number", "Bundle.entry[1].resource.identifier"),
        ("not-a-document", "Bundle.type"),
        ("other-type", "Bundle.entry[0].resource.type"),
        ("no-patient", "Bundle.entry.resource.ofType(Patient)"),
        ("no-identifier", "Bundle.identifier"),
        ("not-fhir", "Bundle.entry[0].resource.status"),
        ("wrong-subject", "Bundle.entry[0].resource.subject"),
        ("two-patients", "Bundle.entry[3].resource"),
        ("preliminary", "Bundle.entry[0].resource.status"),
        ("entered-in-error", "Bundle.entry[0].resource.status"),
        ("encounter-status", "Bundle.entry[2].resource.status"),
        ("encounter-someone-else", "Bundle.entry[2].resource.subject"),
        ("stu3-type", "Bundle.entry[3].resource.resourceType"),
    ],
)
def test_bad_documents_are_refused_naming_the_element_and_kept_whole(
    hub: Hub, http: httpx.Client, kafka: DeadLetterTopic, change: str, element: str
) -> None:
    before, letters = len(hub.published), len(kafka.records)
    raw = orjson.dumps(broken(change))
    response = http.post("/fhir/Bundle", content=raw, headers=bearer(hub))
    assert response.status_code == 400, response.text
    (issue,) = response.json()["issue"]
    assert issue["expression"] == [element], issue
    assert "9912003890" not in response.text  # the number is never echoed
    assert len(hub.published) == before
    (letter,) = kept(hub, kafka, letters)
    assert bytes(letter["payload"]) == raw
    assert letter["source"] == f"urn:ods:{TRUST}"
    assert letter["reason"]["issue"][0]["expression"] == [element]


def test_a_role_that_sends_no_clinical_data_is_refused(hub: Hub, http: httpx.Client, kafka: DeadLetterTopic) -> None:
    before, letters = len(hub.published), len(kafka.records)
    response = send(hub, http, copy.deepcopy(document("doc-auditor")), role="auditor")
    assert response.status_code == 403, response.text
    assert response.json()["issue"][0]["expression"] == ["Authorization"]
    assert (len(hub.published), len(kafka.records)) == (before, letters)  # nothing read, nothing kept


def test_a_document_sent_again_changed_under_its_identifier_corrects_the_letter(hub: Hub, http: httpx.Client) -> None:
    """The same identifier with other content, once the record holds the first: news, not a duplicate
    (it was answered 200 duplicate and the correction never sent)."""
    body = document("doc-corrected")
    first = send(hub, http, body)
    assert first.status_code == 201, first.text
    hub.record()
    before = len(hub.published)
    corrected = copy.deepcopy(body)
    corrected["entry"][0]["resource"]["title"] = "Discharge summary (corrected)"
    corrected["entry"][0]["resource"]["status"] = "amended"
    corrected["entry"][0]["resource"]["date"] = "2021-02-13T09:00:00+00:00"

    second = send(hub, http, corrected)

    assert second.status_code == 200, second.text
    assert len(hub.published) == before + 1  # one event: the correction
    assert second.json()["id"] == first.json()["id"]  # the same letter, corrected
    hub.record()
    held = hub.services.reader.read("Composition", first.json()["id"])
    assert (held["title"], held["status"]) == ("Discharge summary (corrected)", "amended")
    assert send(hub, http, corrected).json()["issue"][0]["code"] == "duplicate"  # and that again is nothing new
