"""A practice's `registered` subscription over the real SQLite record and stores: whom each person is
registered with is taken from each event in log order and kept, so an event that names no practice
(an A03 without PD1, common from PAS that send PD1 on admission only) still reaches the practice the
person is registered with, across batches and restarts of the delivery consumer; a change of
practice, a deletion (`""`), an update sent late and a merge each decide it as the record would."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest

from adapters.hl7v2.to_fhir import map_message
from consumers.delivery import Deliverer
from hub.bootstrap import Services, build
from hub.core.ports import RecordEvent
from hub.settings import Settings
from schemas.subscriptions import Subscription
from schemas.topics import subscriber_topic
from tests.builders import an_adt, an_agreement

pytestmark = pytest.mark.timeout(60)
ADMITTED, DISCHARGED = "uk.nhs.carehub.encounter.admitted.v1", "uk.nhs.carehub.encounter.discharged.v1"
PRACTICES = ("Y00001", "Y00002")


class Topics:
    """The subscribers' topics: which events reached which practice."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    async def publish(self, body: bytes, topic: str, *, key: bytes, headers: dict[str, str]) -> None:
        self.sent.append((topic.split(".")[2].upper(), headers["ce_id"]))


def hub(tmp_path: Path) -> Services:
    services = build(Settings(data_dir=tmp_path))
    services.agreements.load(an_agreement("RXX", *PRACTICES), at=datetime.now(UTC))
    for org in PRACTICES:
        services.subscriptions.save(Subscription(id=f"gp-{org.lower()}", org=org, events=(ADMITTED, DISCHARGED)))
    return services


def adt(services: Services, **fields: Any) -> list[RecordEvent]:
    return [
        RecordEvent(m.event_id, m.event_type, m.source, m.event_time, m.person_key, m.payload)
        for m in map_message(an_adt(**fields), key_secret=services.secrets.key)
    ]


def deliver(services: Services, events: list[RecordEvent]) -> list[tuple[str, str]]:
    """One batch, by a delivery consumer just started (nothing of it kept but what the stores keep)."""
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
    deliverer._topics.update(subscriber_topic(org).name for org in PRACTICES)  # (they exist: no broker admin here)
    asyncio.run(deliverer.handle(events))
    return topics.sent


def test_a_discharge_without_pd1_reaches_the_practice_the_person_is_registered_with(tmp_path: Path) -> None:
    services = hub(tmp_path)
    admit = adt(services, trigger="A01", control_id="R1", practice="Y00001", event_time="202611010930")
    discharge = adt(services, trigger="A03", control_id="R2", practice=None, event_time="202611031105")

    assert deliver(services, admit) == [("Y00001", admit[0].id)]
    assert deliver(services, discharge) == [("Y00001", discharge[0].id)]  # a later batch, a consumer restarted

    # and in one batch with the admission that registered them, the same
    other = hub(tmp_path / "other")
    admit = adt(other, trigger="A01", control_id="R3", practice="Y00002", event_time="202611010930")
    discharge = adt(other, trigger="A03", control_id="R4", practice=None, event_time="202611031105")
    assert deliver(other, [*admit, *discharge]) == [("Y00002", admit[0].id), ("Y00002", discharge[0].id)]
    services.engine.dispose()
    other.engine.dispose()


def test_a_change_of_practice_holds_and_an_update_sent_late_does_not_undo_it(tmp_path: Path) -> None:
    services = hub(tmp_path)
    first = adt(services, trigger="A01", control_id="C1", practice="Y00001", visit="V1", event_time="202611010930")
    moved = adt(services, trigger="A08", control_id="C2", practice="Y00002", visit="V1", event_time="202611020900")
    late = adt(services, trigger="A08", control_id="C3", practice="Y00001", visit="V1", event_time="202611011000")
    discharge = adt(services, trigger="A03", control_id="C4", practice=None, visit="V1", event_time="202611031105")

    deliver(services, [*first, *moved])
    deliver(services, late)  # dated before the move: older news, registration unchanged

    assert deliver(services, discharge) == [("Y00002", discharge[0].id)]
    # an event that names a practice goes by its own word, as it always has: there, not to both
    earlier = adt(services, trigger="A03", control_id="C5", practice="Y00001", visit="V0", event_time="202611011200")
    assert deliver(services, earlier) == [("Y00001", earlier[0].id)]
    services.engine.dispose()


def test_a_registration_deleted_reaches_no_practice(tmp_path: Path) -> None:
    services = hub(tmp_path)
    admit = adt(services, trigger="A01", control_id="D1", practice="Y00001", event_time="202611010930")
    deleted = adt(
        services, trigger="A08", control_id="D2", practice=None, extra_segments=('PD1|||""',), event_time="202611021000"
    )
    discharge = adt(services, trigger="A03", control_id="D3", practice=None, event_time="202611031105")

    deliver(services, [*admit, *deleted])

    assert deliver(services, discharge) == []
    services.engine.dispose()


def test_a_merge_passes_the_retired_identitys_practice_to_a_survivor_with_none(tmp_path: Path) -> None:
    services = hub(tmp_path)
    # admitted under a hospital number only, with the practice; the NHS-numbered identity has none
    old = adt(services, trigger="A01", control_id="M1", nhs_number=None, mrn="MOLD", practice="Y00001",
              event_time="202611010930")  # fmt: skip
    new = adt(
        services, trigger="A01", control_id="M2", mrn="M100", practice=None, visit="V2", event_time="202611011000"
    )
    merge = adt(services, trigger="A40", control_id="M3", mrn="M100", merged_mrn="MOLD", practice=None,
                event_time="202611021000")  # fmt: skip
    discharge = adt(services, trigger="A03", control_id="M4", mrn="M100", practice=None, visit="V2",
                    event_time="202611031105")  # fmt: skip

    assert deliver(services, [*old, *new]) == [("Y00001", old[0].id)]
    deliver(services, merge)

    assert deliver(services, discharge) == [("Y00001", discharge[0].id)]
    services.engine.dispose()
