"""The disclosure ledger names each delivered resource by the record version its event wrote, the
same whether the record consumer was ahead of the delivery consumer or not started yet, and a
mailbox delivery under its own channel. In process, over the in-memory record and ledger."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import httpx
import orjson
import pytest

from consumers.delivery import Deliverer
from consumers.delivery_sender import WebhookSender
from hub.core.delivery import versions_written
from hub.core.ledger import canonical, resource_ref, verify
from hub.core.ports import Json, RecordEvent
from hub.core.record import apply_events
from hub.core.timetravel import reconsider
from hub.store.agreements import PolicySource
from hub.store.memory import MemoryLedger, MemoryRecordStore, MemoryRegistrations
from schemas.events.encounter import ENCOUNTER_ADMITTED, ENCOUNTER_DISCHARGED
from schemas.subscriptions import Subscription
from schemas.topics import subscriber_topic
from tests.builders import an_agreement
from tests.fakes import KeptOutbox, KeptSubscriptions

T0 = datetime(2026, 11, 1, 9, 30, tzinfo=UTC)
ODS = "https://fhir.nhs.uk/Id/ods-organization-code"
EVENTS = (ENCOUNTER_ADMITTED.type, ENCOUNTER_DISCHARGED.type)
AGREEMENTS = [an_agreement("RXX", "Y00001")]


def patient(family: str = "SMITH") -> Json:
    return {
        "resourceType": "Patient",
        "id": "p1",
        "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9434765919"}],
        "name": [{"family": family}],
        "generalPractitioner": [{"identifier": {"system": ODS, "value": "Y00001"}}],
    }


def encounter(status: str) -> Json:
    return {"resourceType": "Encounter", "id": "e1", "status": status, "subject": {"reference": "Patient/p1"}}


def an_event(id: str, type: str, hours: int, *resources: Json) -> RecordEvent:
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]}
    return RecordEvent(id, type, "urn:ods:RXX", T0 + timedelta(hours=hours), "p1", bundle)


# admitted: both resources new (and the practice, reference data: in no ledger entry); discharged: the
# Encounter changed, the Patient said again as it was
PRACTICE = {"resourceType": "Organization", "id": "o1", "identifier": [{"system": ODS, "value": "Y00001"}]}
STREAM = [
    an_event("ev-admit", ENCOUNTER_ADMITTED.type, 0, patient(), encounter("in-progress"), PRACTICE),
    an_event("ev-discharge", ENCOUNTER_DISCHARGED.type, 48, patient(), encounter("finished")),
]


class Agreements:
    def current(self) -> list[Any]:
        return AGREEMENTS


class Broker:
    def __init__(self) -> None:
        self.published: list[Json] = []

    async def publish(self, body: bytes, topic: str, **_: Any) -> None:
        self.published.append(orjson.loads(body))


@dataclasses.dataclass
class Hub:
    store: MemoryRecordStore
    ledger: MemoryLedger
    deliverer: Deliverer
    outbox: KeptOutbox


def a_hub(subs: list[Subscription], now: datetime) -> Hub:
    store, ledger, outbox = MemoryRecordStore(), MemoryLedger(), KeptOutbox()
    deliverer = Deliverer(
        broker=cast(Any, Broker()),
        bootstrap="",
        uow_factory=store.unit_of_work,
        subscriptions=cast(Any, KeptSubscriptions(subs)),
        outbox=cast(Any, outbox),
        policy=PolicySource(cast(Any, Agreements()), store.reader()),
        ledger=ledger,
        registrations=MemoryRegistrations(),
        clock=lambda: now,
    )
    deliverer._topics.update(subscriber_topic(s.org).name for s in subs)  # the topics exist: no broker admin here
    return Hub(store, ledger, deliverer, outbox)


def apply(store: MemoryRecordStore, events: list[RecordEvent]) -> None:
    with store.unit_of_work() as uow:
        apply_events(uow, events)
        uow.commit()


def delivered(resource: Json) -> Json:
    """A resource as the delivery consumer sends it: the event's content, with its supplier."""
    return {**resource, "meta": {"source": "urn:ods:RXX"}}


def digest(resource: Json) -> str:
    return hashlib.sha256(canonical(delivered(resource))).hexdigest()


def topic_refs(ledger: MemoryLedger) -> dict[str, list[str]]:
    return {e.body["event"]: e.body["resources"] for e in ledger.rows if e.body["channel"] == "topic"}


@pytest.mark.parametrize("record_ahead", [False, True], ids=["record-not-started", "record-ahead"])
def test_each_delivered_resource_is_named_by_the_version_its_event_wrote(record_ahead: bool) -> None:
    hub = a_hub([Subscription(id="gp", org="Y00001", events=EVENTS)], datetime.now(UTC))
    if record_ahead:
        apply(hub.store, STREAM)
    assert asyncio.run(hub.deliverer.handle(STREAM)) == 2

    assert topic_refs(hub.ledger) == {
        "ev-admit": [
            f"Patient/p1/_history/1#{digest(patient())}",
            f"Encounter/e1/_history/1#{digest(encounter('in-progress'))}",
        ],
        "ev-discharge": [  # the Patient said again: its content, by hash, named as no record version
            f"Patient/p1#{digest(patient())}",
            f"Encounter/e1/_history/2#{digest(encounter('finished'))}",
        ],
    }
    assert verify(hub.ledger.entries())[1] is None
    assert hub.store.processed == {("record", "ev-admit"), ("record", "ev-discharge")}  # the record has the batch


def test_the_ledger_says_the_same_whichever_consumer_applied_the_events() -> None:
    now = datetime.now(UTC)
    bodies = []
    for record_ahead in (False, True):
        hub = a_hub([Subscription(id="gp", org="Y00001", events=EVENTS)], now)
        if record_ahead:
            apply(hub.store, STREAM)
        asyncio.run(hub.deliverer.handle(STREAM))
        bodies.append([e.body for e in hub.ledger.rows])
    assert bodies[0] == bodies[1]


def test_a_poison_event_is_left_to_the_record_consumer_and_the_rest_is_applied_and_named() -> None:
    hub = a_hub([Subscription(id="gp", org="Y00001", events=EVENTS)], datetime.now(UTC))
    poison = an_event("ev-poison", ENCOUNTER_ADMITTED.type, 1, {"resourceType": "Encounter"})  # no id
    asyncio.run(hub.deliverer.handle([STREAM[0], poison, STREAM[1]]))
    assert ("record", "ev-poison") not in hub.store.processed
    assert sorted(topic_refs(hub.ledger)) == ["ev-admit", "ev-discharge"]
    assert topic_refs(hub.ledger)["ev-discharge"][1].startswith("Encounter/e1/_history/2#")


def test_webhook_and_mailbox_deliveries_are_recorded_under_their_own_channels(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    hook = {"url": "https://hooks.invalid/carehub", "secret_env": "HOOK_SECRET"}
    subs = [
        Subscription(id="gp-hook", org="Y00001", events=EVENTS, webhook=hook),
        Subscription(id="gp-box", org="Y00001", events=EVENTS, mailbox=str(tmp_path / "box")),
    ]
    hub = a_hub(subs, now)
    asyncio.run(hub.deliverer.handle(STREAM))
    posted: list[bytes] = []

    def answer(request: httpx.Request) -> httpx.Response:
        posted.append(request.content)
        return httpx.Response(204)

    client = httpx.AsyncClient(transport=httpx.MockTransport(answer))
    sender = WebhookSender(hub.deliverer, client=client, env={"HOOK_SECRET": "s3cret"})
    assert asyncio.run(sender.once()) == 4
    asyncio.run(client.aclose())

    sent = {("gp-hook", orjson.loads(body)["id"]): orjson.loads(body) for body in posted}
    sent |= {("gp-box", path.stem): orjson.loads(path.read_bytes()) for path in (tmp_path / "box").glob("*.json")}
    assert len(sent) == 4
    channels = {(e.body["recipient_user"], e.body["channel"]) for e in hub.ledger.rows}
    assert channels == {
        ("subscription:gp-hook", "topic"),
        ("subscription:gp-hook", "webhook"),
        ("subscription:gp-box", "topic"),
        ("subscription:gp-box", "mailbox"),
    }
    topic = topic_refs(hub.ledger)
    # (an attempt's result entry names no resources: the attempt's entry does, tests/integration/test_webhook_truth.py)
    for entry in (e for e in hub.ledger.rows if e.body["channel"] != "topic" and "outcome" not in e.body):
        sub, event = entry.body["recipient_user"].removeprefix("subscription:"), entry.body["event"]
        assert entry.body["resources"] == topic[event]  # the same content, the same record versions
        written = versions_written(hub.store.resources[("Provenance", event)].content)
        resources = [
            e["resource"] for e in sent[(sub, event)]["entry"] if e["resource"]["resourceType"] != "Organization"
        ]
        named = [resource_ref(r, written.get(f"{r['resourceType']}/{r['id']}")) for r in resources]
        assert entry.body["resources"] == named  # what was sent, by hash, and the versions its event wrote


def test_time_travel_compares_the_version_disclosed_with_the_version_held_now() -> None:
    now = datetime.now(UTC)
    hub = a_hub([Subscription(id="gp", org="Y00001", events=EVENTS)], now)
    asyncio.run(hub.deliverer.handle(STREAM))
    held = {f"{kind}/{id}": row.content for (kind, id), row in hub.store.resources.items()}
    rows = {
        (r.seq, r.resource): r
        for r in reconsider(
            hub.ledger.rows, held, AGREEMENTS, [], now, history=[(now - timedelta(days=1), a) for a in AGREEMENTS]
        )
    }
    assert rows[(1, "Encounter/e1/_history/1")].now_basis.endswith(
        "(decided on version 2: version 1 was disclosed)"
    )  # admitted, then discharged: the record has moved on since
    assert "decided on version" not in rows[(2, "Encounter/e1/_history/2")].now_basis
    assert "decided on version" not in rows[(1, "Patient/p1/_history/1")].now_basis
    assert all("version ?" not in r.now_basis for key, r in rows.items() if "/_history/" in key[1])


def test_versions_written_are_the_versioned_targets_of_the_events_provenance() -> None:
    provenance = {
        "resourceType": "Provenance",
        "target": [
            {"reference": "Patient/p1/_history/3"},
            {"reference": "Encounter/e1/_history/1"},
            {"reference": "Encounter/e1/_history/2"},  # written twice by one event (a merge): the last
            {"reference": "Organization/o1"},
            {},
        ],
    }
    assert versions_written(provenance) == {"Patient/p1": "3", "Encounter/e1": "2"}
    assert versions_written(None) == {}


def test_a_resource_is_named_by_its_own_version_a_given_one_or_none() -> None:
    stored = {**patient(), "meta": {"versionId": "4"}}
    assert resource_ref(stored).startswith("Patient/p1/_history/4#")
    assert resource_ref(delivered(patient()), "2") == f"Patient/p1/_history/2#{digest(patient())}"
    assert resource_ref(delivered(patient())) == f"Patient/p1#{digest(patient())}"
