"""A push is decided as a read is: a Task or episode the coordination service derived from a referral
is delivered no further than the referral itself could be (consumers.delivery Deliverer.judge passes
the record's origins to hub.core.policy.decide). Over the in-memory record."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

import pytest

from consumers.delivery import Deliverer
from hub.core.ports import StoredResource
from hub.store.agreements import PolicySource
from hub.store.memory import MemoryLedger, MemoryRecordStore, MemoryRegistrations
from schemas.subscriptions import Subscription
from tests.fakes import KeptOutbox, KeptSubscriptions
from tests.unit.test_derived_data_sharing import AGREEMENTS, COUNCIL, GP, VCSE, referral, task

NOW = datetime(2026, 12, 8, 10, 0, tzinfo=UTC)


class Agreements:
    def current(self) -> list[Any]:
        return AGREEMENTS


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
