"""The PIC summary as a GP practice receives it: a FHIR R4 document (Composition first, identifier,
timestamp, every reference resolved inside it) whose Patient carries the person's name, date of
birth, NHS number and address as the record holds them, signed by the coordinator and the service,
in a mailbox file named by date, NHS number and letter; the demographics only where an agreement
shares them with the practice (else no Patient and no NHS number in the name, as before). In
process, over the in-memory record and ledger."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import orjson
from fhir.resources.R4B.bundle import Bundle

from consumers.delivery import Deliverer
from consumers.delivery_sender import WebhookSender
from hub.core.pic_summary import composition, letter, mailbox_name
from hub.core.ports import Json, RecordEvent
from hub.store.agreements import PolicySource
from hub.store.memory import MemoryLedger, MemoryRecordStore, MemoryRegistrations
from schemas.events.coordination import COORDINATOR_SYSTEM, PIC_SUMMARY_SENT
from schemas.events.encounter import ENCOUNTER_DISCHARGED
from schemas.subscriptions import Subscription
from schemas.topics import subscriber_topic
from tests.builders import an_agreement
from tests.fakes import KeptOutbox, KeptSubscriptions

ODS = "https://fhir.nhs.uk/Id/ods-organization-code"
NHS = "https://fhir.nhs.uk/Id/nhs-number"
SERVICE, PRACTICE = "Y0PIC", "Y90001"
CLOSED = datetime(2026, 12, 6, 23, 30, tzinfo=UTC)  # (GMT in December: still the 6th in the UK)
SMITH: Json = {
    "resourceType": "Patient",
    "id": "p1",
    "identifier": [{"system": NHS, "value": "9434765919"}, {"system": "https://trust.invalid/mrn", "value": "M1"}],
    "name": [{"family": "SMITH", "given": ["Edith"], "prefix": ["Mrs"]}],
    "birthDate": "1938-04-02",
    "gender": "female",
    "address": [{"line": ["1 High Street"], "city": "Croydon", "postalCode": "CR0 1AA"}],
    "generalPractitioner": [{"identifier": {"system": ODS, "value": PRACTICE}}],
}
EPISODE: Json = {
    "resourceType": "EpisodeOfCare",
    "id": "ep1",
    "status": "finished",
    "patient": {"reference": "Patient/p1"},
    "managingOrganization": {"identifier": {"system": ODS, "value": SERVICE}},
    "careManager": {"identifier": {"system": COORDINATOR_SYSTEM, "value": "c-amara"}},
    "referralRequest": [{"reference": "ServiceRequest/r1"}],
    "period": {"start": "2026-11-13T03:30:00+00:00", "end": CLOSED.isoformat()},
}


def the_letter() -> RecordEvent:
    summary = composition(
        episode=EPISODE,
        person="p1",
        at=CLOSED,
        author=SERVICE,
        author_name="Personal Independence Coordinator service",
        sections={"reason": "lives alone", "goals": "lunch club weekly", "follow-up": "GP to review medicines"},
    )
    doc = letter(
        summary,
        person="p1",
        nhs="9434765919",
        practice=PRACTICE,
        episode=EPISODE,
        at=CLOSED,
        service=(SERVICE, "Personal Independence Coordinator service"),
    )
    return RecordEvent(
        "5f0c3a1e-0000-5000-8000-000000000001", PIC_SUMMARY_SENT.type, f"urn:ods:{SERVICE}", CLOSED, "p1", doc
    )


def hospital_patient() -> RecordEvent:
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": SMITH}]}
    return RecordEvent("ev-a03", ENCOUNTER_DISCHARGED.type, "urn:ods:RXX", CLOSED - timedelta(days=30), "p1", bundle)


class Agreements:
    def __init__(self, categories: tuple[str, ...]) -> None:
        self.categories = categories

    def current(self) -> list[Any]:
        return [an_agreement(SERVICE, PRACTICE, "RXX", categories=self.categories)]


class Broker:
    async def publish(self, body: bytes, topic: str, **_: Any) -> None:
        pass


def delivered(tmp_path: Path, categories: tuple[str, ...]) -> tuple[list[Path], MemoryLedger]:
    """The letter delivered into a practice's mailbox under an agreement sharing `categories`."""
    store, ledger = MemoryRecordStore(), MemoryLedger()
    box = tmp_path / "mailbox" / PRACTICE
    sub = Subscription(id="gp-pic", org=PRACTICE, events=(PIC_SUMMARY_SENT.type,), mailbox=str(box))
    deliverer = Deliverer(
        broker=cast(Any, Broker()),
        bootstrap="",
        uow_factory=store.unit_of_work,
        subscriptions=cast(Any, KeptSubscriptions([sub])),
        outbox=cast(Any, KeptOutbox()),
        policy=PolicySource(cast(Any, Agreements(categories)), store.reader()),
        ledger=ledger,
        registrations=MemoryRegistrations(),
        clock=lambda: CLOSED,
    )
    deliverer._topics.add(subscriber_topic(PRACTICE).name)
    asyncio.run(deliverer.handle([hospital_patient(), the_letter()]))
    assert asyncio.run(WebhookSender(deliverer, env={}).once()) == 1
    return sorted(box.glob("*.json")), ledger


def test_the_letter_is_a_fhir_document_a_practice_can_file_by_two_identifiers(tmp_path: Path) -> None:
    [path], _ = delivered(tmp_path, ("demographics", "care-plans"))
    # sortable by day (the UK date of the letter), findable by NHS number, one file per letter
    assert path.name == "20261206-9434765919-pic-summary-5f0c3a1e.json"
    sent = orjson.loads(path.read_bytes())
    Bundle.model_validate(sent)  # (FHIR R4B: types and cardinalities)
    assert sent["type"] == "document"
    assert sent["identifier"]["system"] and sent["identifier"]["value"].startswith("urn:uuid:")  # bdl-9
    assert sent["timestamp"] == CLOSED.isoformat()  # bdl-10
    resources = [e["resource"] for e in sent["entry"]]
    assert resources[0]["resourceType"] == "Composition"  # bdl-11
    assert all(e["fullUrl"].startswith("https://") for e in sent["entry"])
    assert {r["resourceType"] for r in resources} == {"Composition", "Patient"}  # (the episode stays on the record)

    patient = resources[1]
    assert patient["identifier"] == [{"system": NHS, "value": "9434765919"}]  # (not the trust's MRN)
    assert patient["name"] == SMITH["name"]
    assert patient["birthDate"] == "1938-04-02"
    assert patient["address"] == SMITH["address"]
    assert "gender" not in patient
    assert patient["generalPractitioner"][0]["identifier"]["value"] == PRACTICE

    letter_ = resources[0]
    contained = {f"#{r['id']}": r for r in letter_["contained"]}
    [coordinator, service] = letter_["author"]
    assert contained[coordinator["reference"]]["resourceType"] == "Practitioner"
    assert contained[coordinator["reference"]]["identifier"] == [{"system": COORDINATOR_SYSTEM, "value": "c-amara"}]
    assert coordinator["display"] == "c-amara, Personal Independence Coordinator service (Y0PIC)"
    assert contained[service["reference"]]["name"] == "Personal Independence Coordinator service"
    assert service["identifier"] == {"system": ODS, "value": SERVICE}
    assert letter_["custodian"] == service
    assert letter_["event"] == [{"period": EPISODE["period"]}]

    # every reference resolves inside the document: contained ones, or an entry's fullUrl
    base = sent["entry"][0]["fullUrl"].rsplit("/Composition/", 1)[0]
    urls = {e["fullUrl"] for e in sent["entry"]}
    for entry in sent["entry"]:
        for ref in re.findall(r'"reference":"([^"]+)"', orjson.dumps(entry["resource"]).decode()):
            assert ref in contained if ref.startswith("#") else f"{base}/{ref}" in urls, ref


def test_without_an_agreement_for_demographics_the_practice_gets_no_patient_details(tmp_path: Path) -> None:
    [path], ledger = delivered(tmp_path, ("care-plans",))
    assert path.name == "20261206-pic-summary-5f0c3a1e.json"  # (the NHS number withheld, so not in the name)
    sent = orjson.loads(path.read_bytes())
    assert sent["type"] == "collection"  # no whole document without its Patient, as before
    assert [e["resource"]["resourceType"] for e in sent["entry"]] == ["Composition"]
    assert b"9434765919" not in path.read_bytes() and b"SMITH" not in path.read_bytes()
    # (refused when the event was delivered, and never queued for the mailbox)
    refused = [e.body for e in ledger.rows if e.body["decision"] == "deny"]
    assert [(r["channel"], r["resources"][0].split("#")[0]) for r in refused] == [("topic", "Patient/p1")]


def test_a_mailbox_file_is_named_by_the_uk_day_of_the_letter() -> None:
    patient = {"resourceType": "Patient", "id": "p1", "identifier": [{"system": NHS, "value": "9434765919"}]}
    summer = datetime(2026, 7, 1, 23, 30, tzinfo=UTC)  # (00:30 on 2 July in the UK)
    assert mailbox_name("abc-def-123456", summer, [patient]) == "20260702-9434765919-pic-summary-abcdef12.json"
    odd = {**patient, "identifier": [{"system": NHS, "value": "../../etc"}]}  # (never a path: no NHS number)
    assert mailbox_name("abc-def-123456", summer, [odd]) == "20260702-pic-summary-abcdef12.json"
