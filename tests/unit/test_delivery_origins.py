"""A push is decided as a read is: a Task or episode the coordination service derived from a referral
is delivered no further than the referral itself could be (consumers.delivery Deliverer.judge passes
the record's origins to hub.core.policy.decide). Over the in-memory record."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

import pytest

from consumers.delivery import Deliverer
from hub.core.ports import Json, StoredResource
from hub.store.agreements import PolicySource
from hub.store.memory import MemoryLedger, MemoryRecordStore, MemoryRegistrations
from schemas.subscriptions import Subscription
from tests.builders import an_agreement
from tests.fakes import KeptOutbox, KeptSubscriptions

COUNCIL, PIC, GP, VCSE = "E10000023", "Y0PIC", "Y00001", "VCS001"
NOW = datetime(2026, 12, 8, 10, 0, tzinfo=UTC)
EVERYTHING = ("demographics", "referrals", "tasks", "care-plans", "provenance", "consents")
AGREEMENTS = [
    an_agreement(PIC, COUNCIL, id="pic-council", categories=EVERYTHING),
    an_agreement(GP, PIC, COUNCIL, id="gp-pic-council", categories=EVERYTHING),
    an_agreement(VCSE, PIC, id="vcse-pic", categories=EVERYTHING),
]


class Agreements:
    def current(self) -> list[Any]:
        return AGREEMENTS


def referral(id: str, source: str) -> Json:
    return {
        "resourceType": "ServiceRequest",
        "id": id,
        "subject": {"reference": "Patient/p1"},
        "meta": {"source": f"urn:ods:{source}", "versionId": "1"},
    }


def task(focus: str) -> Json:
    return {
        "resourceType": "Task",
        "id": f"task-{focus}",
        "for": {"reference": "Patient/p1"},
        "focus": {"reference": f"ServiceRequest/{focus}"},
        "meta": {"source": f"urn:ods:{PIC}", "versionId": "1"},
    }


def a_deliverer() -> Deliverer:
    store = MemoryRecordStore()
    with store.unit_of_work() as uow:
        for r in (referral("from-vcse", VCSE), referral("from-gp", GP)):
            uow.put(StoredResource("ServiceRequest", r["id"], "p1", 1, NOW, "ev-" + r["id"], r))
        uow.commit()
    return Deliverer(
        broker=cast(Any, None),
        bootstrap="",
        uow_factory=store.unit_of_work,
        subscriptions=cast(Any, KeptSubscriptions([])),
        outbox=cast(Any, KeptOutbox()),
        policy=PolicySource(cast(Any, Agreements()), store.reader()),
        ledger=MemoryLedger(),
        registrations=MemoryRegistrations(),
        clock=lambda: NOW,
    )


@pytest.mark.parametrize(("focus", "decided"), [("from-vcse", "deny"), ("from-gp", "permit")])
def test_a_task_on_a_referral_is_pushed_no_further_than_the_referral(focus: str, decided: str) -> None:
    council = Subscription(id="council", org=COUNCIL, events=("uk.nhs.carehub.task.created.v1",), scope="all-permitted")
    judge = a_deliverer().judge(council, ["p1"], NOW, consents=[])
    assert judge(task(focus)).outcome == decided
