"""The delivery consumer over the real SQLite record and policy, given one batch that holds a person's
objection, a merge (A40) of their old identity into them and an event sent late under the old
identity, with the record consumer behind (the delivery consumer applies each event itself, in log
order): the late event is withheld from the practice they objected to, as it is when the record
consumer is ahead. And an objection recorded under an identity a later merge retired still holds
for what is filed there (a merge reversed leaves it so)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest

from adapters.hl7v2.to_fhir import map_message
from consumers.delivery import Deliverer
from hub.bootstrap import Services, build
from hub.core.ports import RecordEvent
from hub.core.record import apply_events
from hub.settings import Settings
from schemas.events.consent import CONSENT_RECORDED
from schemas.subscriptions import Subscription
from schemas.topics import subscriber_topic
from tests.builders import an_adt, an_agreement, an_objection

pytestmark = pytest.mark.timeout(60)
EVENTS = ("uk.nhs.carehub.encounter.admitted.v1", "uk.nhs.carehub.encounter.discharged.v1")


class Topics:
    """The subscribers' topics: which events reached which."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    async def publish(self, body: bytes, topic: str, *, key: bytes, headers: dict[str, str]) -> None:
        self.sent.append((topic, headers["ce_id"]))


def adt(services: Services, raw: bytes) -> list[RecordEvent]:
    return [
        RecordEvent(m.event_id, m.event_type, m.source, m.event_time, m.person_key, m.payload)
        for m in map_message(raw, key_secret=services.secrets.key)
    ]


def objection(person: str) -> RecordEvent:
    consent = an_objection("9434765919", "Y00001") | {"id": str(uuid.uuid4())}
    consent["patient"] = {"reference": f"Patient/{person}"}
    consent["meta"] = {"source": "urn:ods:RXX"}
    at = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
    return RecordEvent(str(uuid.uuid4()), CONSENT_RECORDED.type, "urn:ods:RXX", at, person, consent)


def deliver(services: Services, events: list[RecordEvent]) -> Topics:
    topics = Topics()
    deliverer = Deliverer(
        broker=cast(Any, topics),
        bootstrap="",
        uow_factory=services.uow_factory,
        subscriptions=services.subscriptions,
        outbox=services.outbox,
        policy=cast(Any, services.policy),
        ledger=services.ledger,
        registrations=services.registrations,
        clock=lambda: datetime.now(UTC),
    )
    deliverer._topics.add(subscriber_topic("Y00001").name)  # (it exists: no broker admin here)
    asyncio.run(deliverer.handle(events))
    return topics


def hub(tmp_path: Path) -> Services:
    services = build(Settings(data_dir=tmp_path))
    services.agreements.load(an_agreement("RXX", "Y00001"), at=datetime.now(UTC))
    services.subscriptions.save(Subscription(id="gp", org="Y00001", events=EVENTS, scope="all-permitted"))
    return services


def test_a_late_event_in_the_merges_own_batch_is_withheld_under_the_survivors_objection(tmp_path: Path) -> None:
    services = hub(tmp_path)
    old = adt(services, an_adt(trigger="A01", control_id="M1", nhs_number=None, mrn="MOLD", event_time="202611010930"))
    new = adt(services, an_adt(trigger="A01", control_id="M2", mrn="M100", visit="V2", event_time="202611011000"))
    with services.uow_factory() as uow:  # the admissions are on the record, the rest of the log is not
        apply_events(uow, [*old, *new])
        uow.commit()
    survivor = new[0].subject
    merge = adt(
        services, an_adt(trigger="A40", control_id="M3", mrn="M100", merged_mrn="MOLD", event_time="202611021000")
    )
    late = adt(services, an_adt(trigger="A03", control_id="M4", nhs_number=None, mrn="MOLD", event_time="202611021100"))

    topics = deliver(services, [objection(survivor), *merge, *late])

    assert topics.sent == []  # the late discharge, under the old identity, withheld like the rest
    decided = [e.body for e in services.ledger.entries() if e.body.get("event") == late[0].id]
    assert decided and {d["decision"] for d in decided} == {"deny"}, decided
    services.engine.dispose()


def test_an_objection_filed_under_an_identity_a_reversed_merge_retired_still_holds_for_it(tmp_path: Path) -> None:
    # A merged into B, the person objects (filed under B), then the merge is reversed (B into A): the
    # reversal moves nothing of B's (its survivor is followed through A's old link back to B), so the
    # objection stays filed under B, and must still hold for B's resources and late events
    services = hub(tmp_path)

    def sent(control: str, trigger: str, mrn: str, at: str, merged: str | None = None) -> list[RecordEvent]:
        raw = an_adt(trigger=trigger, control_id=control, nhs_number=None, mrn=mrn, merged_mrn=merged, event_time=at)
        return adt(services, raw)

    a, b = sent("C1", "A01", "MA", "202611010930"), sent("C2", "A01", "MB", "202611010940")
    person_b = b[0].subject
    log = [*a, *b, *sent("C3", "A40", "MB", "202611011000", merged="MA"), objection(person_b)]
    log += sent("C4", "A40", "MA", "202611011100", merged="MB")
    with services.uow_factory() as uow:
        apply_events(uow, log)
        uow.commit()
    assert services.policy is not None

    rules = services.policy.consents_of([person_b])[person_b]

    assert [r.deny for r in rules] == [True]
    late = sent("C5", "A03", "MB", "202611011200")
    assert deliver(services, late).sent == []
    services.engine.dispose()
