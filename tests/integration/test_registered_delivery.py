"""A practice's `registered` subscription over the real SQLite record and stores: whom each person is
registered with is taken from each event in log order and kept, so an event that names no practice
(an A03 without PD1, common from PAS that send PD1 on admission only) still reaches the practice the
person is registered with, across batches and restarts of the delivery consumer; a change of
practice, a deletion (`""`), an update sent late, a merge, a referral's practice, a Patient of the
wrong shape and a batch redone after a crash each decide it as hub.core.delivery says."""

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
from hub.settings import Settings
from schemas.events.coordination import REFERRAL_RECEIVED
from schemas.subscriptions import Subscription
from schemas.topics import subscriber_topic
from tests.builders import an_adt, an_agreement

pytestmark = pytest.mark.timeout(60)
ADMITTED, DISCHARGED = "uk.nhs.carehub.encounter.admitted.v1", "uk.nhs.carehub.encounter.discharged.v1"
PRACTICES = ("Y00001", "Y00002")
NHS = "https://fhir.nhs.uk/Id/nhs-number"
ODS = "https://fhir.nhs.uk/Id/ods-organization-code"


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


def deliver(
    services: Services, events: list[RecordEvent], positions: list[tuple[int, int]] | None = None
) -> list[tuple[str, str]]:
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
    asyncio.run(deliverer.handle(events, positions))
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


def test_after_a_merge_the_retired_identitys_late_events_go_by_the_survivors_registration(tmp_path: Path) -> None:
    # (review: a late A03 under the identity merged away reached its old practice, even once the
    # person had left it: the record files it under the survivor, whose registration is the one)
    services = hub(tmp_path)
    old = adt(services, trigger="A01", control_id="M1", nhs_number=None, mrn="MOLD", practice="Y00001",
              event_time="202611010930")  # fmt: skip
    new = adt(services, trigger="A01", control_id="M2", mrn="M100", practice="Y00002", visit="V2",
              event_time="202611011000")  # fmt: skip
    merge = adt(services, trigger="A40", control_id="M3", mrn="M100", merged_mrn="MOLD", practice=None,
                event_time="202611021000")  # fmt: skip
    late = adt(services, trigger="A03", control_id="M4", nhs_number=None, mrn="MOLD", practice=None,
               event_time="202611021100")  # fmt: skip
    left = adt(services, trigger="A08", control_id="M5", mrn="M100", practice=None, visit="V2",
               extra_segments=('PD1|||""',), event_time="202611021200")  # fmt: skip
    later = adt(services, trigger="A03", control_id="M6", nhs_number=None, mrn="MOLD", practice=None, visit="V9",
                event_time="202611021300")  # fmt: skip

    deliver(services, [*old, *new])
    deliver(services, merge)
    assert deliver(services, late) == [("Y00002", late[0].id)]
    deliver(services, left)  # the person leaves Y00002's list
    assert deliver(services, later) == []
    services.engine.dispose()


def test_a_practice_a_referral_names_registers_no_one(tmp_path: Path) -> None:
    services = hub(tmp_path)
    admit = adt(services, trigger="A01", control_id="S1", practice=None, event_time="202611010930")
    person = admit[0].subject
    stub = {"resourceType": "Patient", "id": person, "identifier": [{"system": NHS, "value": "9434765919"}]}
    stub["generalPractitioner"] = [{"identifier": {"system": ODS, "value": "Y00002"}}]
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": stub}]}
    at = datetime(2026, 11, 2, 9, tzinfo=UTC)
    referral = RecordEvent(str(uuid.uuid4()), REFERRAL_RECEIVED.type, "urn:ods:VCS01", at, person, bundle)
    discharge = adt(services, trigger="A03", control_id="S2", practice=None, event_time="202611031105")

    deliver(services, [*admit, referral])

    assert deliver(services, discharge) == []  # the practice the voluntary sector typed decides nothing
    services.engine.dispose()


def test_a_patient_of_the_wrong_shape_is_skipped_and_the_rest_of_the_batch_delivered(tmp_path: Path) -> None:
    # (review: a Patient whose generalPractitioner was not a list of objects stopped the whole consumer)
    services = hub(tmp_path)
    admit = adt(services, trigger="A01", control_id="P1", practice="Y00001", event_time="202611010930")
    bad = adt(services, trigger="A08", control_id="P2", practice=None, event_time="202611011000")[0]
    bad.payload["entry"][0]["resource"]["generalPractitioner"] = ["Organization/x"]
    bad.payload["entry"][0]["resource"]["extension"] = ["x"]
    discharge = adt(services, trigger="A03", control_id="P3", practice=None, event_time="202611031105")

    assert deliver(services, [*admit, bad, *discharge]) == [("Y00001", admit[0].id), ("Y00001", discharge[0].id)]
    services.engine.dispose()


def test_a_batch_redone_decides_as_it_did_the_first_time(tmp_path: Path) -> None:
    # (review: the consumer stopped after keeping a batch's registrations, before committing its offsets:
    # the batch, redone, sent the A03 to the practice an A08 later in the same batch named)
    services = hub(tmp_path)
    admit = adt(services, trigger="A01", control_id="B1", practice="Y00001", event_time="202611010930")
    discharge = adt(services, trigger="A03", control_id="B2", practice=None, event_time="202611031105")
    moved = adt(services, trigger="A08", control_id="B3", practice="Y00002", event_time="202611031200")
    deliver(services, admit, [(0, 1)])
    batch, positions = [*discharge, *moved], [(0, 2), (0, 3)]

    first = deliver(services, batch, positions)
    again = deliver(services, batch, positions)  # the same records, from the offset last committed

    assert first == again == [("Y00001", discharge[0].id)]
    later = adt(services, trigger="A03", control_id="B4", practice=None, visit="V2", event_time="202611041000")
    assert deliver(services, later, [(0, 4)]) == [("Y00002", later[0].id)]  # the next batch: moved
    services.engine.dispose()


class MeanwhileStore:
    """The registrations store, with another worker's batch kept just after this worker first reads."""

    def __init__(self, inner: Any, meanwhile: Any) -> None:
        self.inner, self.meanwhile = inner, meanwhile

    def of(self, keys: Any, starts: Any = None) -> Any:
        found = self.inner.of(keys, starts)
        if self.meanwhile is not None:
            run, self.meanwhile = self.meanwhile, None
            run()
        return found

    def save(self, *args: Any) -> None:
        self.inner.save(*args)


def test_a_merge_another_worker_keeps_meanwhile_is_not_undone(tmp_path: Path) -> None:
    # (review: two delivery workers; one read the retired person's row before the other kept their
    # merge, then saved that row as it had read it, and the person reached their old practice again)
    services = hub(tmp_path)
    old = adt(services, trigger="A01", control_id="W1", nhs_number=None, mrn="MOLD", practice="Y00001",
              event_time="202611010930")  # fmt: skip
    new = adt(services, trigger="A01", control_id="W2", mrn="M100", practice="Y00002", visit="V2",
              event_time="202611011000")  # fmt: skip
    merge = adt(services, trigger="A40", control_id="W3", mrn="M100", merged_mrn="MOLD", practice=None,
                event_time="202611021000")  # fmt: skip
    restated = adt(services, trigger="A08", control_id="W4", nhs_number=None, mrn="MOLD", practice="Y00001",
                   event_time="202611020900")  # fmt: skip
    late = adt(services, trigger="A03", control_id="W5", nhs_number=None, mrn="MOLD", practice=None, visit="V9",
               event_time="202611021100")  # fmt: skip
    deliver(services, old, [(0, 1)])
    deliver(services, new, [(1, 1)])
    store = services.registrations

    def other_worker() -> None:
        services.registrations = store
        deliver(services, merge, [(1, 2)])

    services.registrations = cast(Any, MeanwhileStore(store, other_worker))
    deliver(services, restated, [(0, 2)])
    services.registrations = store

    assert deliver(services, late, [(0, 3)]) == [("Y00002", late[0].id)]
    services.engine.dispose()


def test_a_batch_of_two_partitions_redone_on_one_after_a_rebalance_decides_as_it_did(tmp_path: Path) -> None:
    # (review: the batch held the retired person's A03 on one partition and their merge on another;
    # kept, not committed; the A03's partition, redone by another worker, went by the merge)
    services = hub(tmp_path)
    old = adt(services, trigger="A01", control_id="R1", nhs_number=None, mrn="MOLD", practice="Y00001",
              event_time="202611010930")  # fmt: skip
    new = adt(services, trigger="A01", control_id="R2", mrn="M100", practice="Y00002", visit="V2",
              event_time="202611011000")  # fmt: skip
    discharge = adt(services, trigger="A03", control_id="R3", nhs_number=None, mrn="MOLD", practice=None,
                    event_time="202611020900")  # fmt: skip
    merge = adt(services, trigger="A40", control_id="R4", mrn="M100", merged_mrn="MOLD", practice=None,
                event_time="202611021000")  # fmt: skip
    deliver(services, old, [(0, 1)])
    deliver(services, new, [(1, 1)])

    first = deliver(services, [*discharge, *merge], [(0, 2), (1, 2)])
    again = deliver(services, discharge, [(0, 2)])

    assert first[:1] == again == [("Y00001", discharge[0].id)]
    services.engine.dispose()


def test_a_merge_reversed_by_a_batch_that_read_the_person_before_the_merge_was_kept_is_reversed(
    tmp_path: Path,
) -> None:
    # (review: X mistakenly merged into S at 10:00 on S's partition, reversed at 11:00 on X's, whose
    # worker read X before the merge was kept: the merge stayed, beside the reversal, a loop)
    services = hub(tmp_path)
    x = adt(services, trigger="A01", control_id="V1", nhs_number=None, mrn="MOLD", practice="Y00001",
            event_time="202611010930")  # fmt: skip
    s = adt(services, trigger="A01", control_id="V2", nhs_number=None, mrn="M100", practice="Y00002", visit="V2",
            event_time="202611011000")  # fmt: skip
    merge = adt(services, trigger="A40", control_id="V3", nhs_number=None, mrn="M100", merged_mrn="MOLD",
                practice=None, event_time="202611021000")  # fmt: skip
    back = adt(services, trigger="A40", control_id="V4", nhs_number=None, mrn="MOLD", merged_mrn="M100",
               practice="Y00001", event_time="202611021100")  # fmt: skip
    late = adt(services, trigger="A03", control_id="V5", nhs_number=None, mrn="MOLD", practice=None, visit="V9",
               event_time="202611021200")  # fmt: skip
    deliver(services, x, [(0, 1)])
    deliver(services, s, [(1, 1)])
    store = services.registrations

    def other_worker() -> None:
        services.registrations = store
        deliver(services, merge, [(1, 2)])

    services.registrations = cast(Any, MeanwhileStore(store, other_worker))
    deliver(services, back, [(0, 2)])
    services.registrations = store

    assert deliver(services, late, [(0, 3)]) == [("Y00001", late[0].id)]
    services.engine.dispose()
