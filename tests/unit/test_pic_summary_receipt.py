"""A PIC summary's delivery is the practice's receipt (it closes the coordinator's task and counts in
the 48-hour KPI) only when the summary itself went: a delivery the policy cut down to the letter's
Patient is no letter."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from consumers.delivery_sender import WebhookSender
from schemas.events.coordination import PIC_SUMMARY_SENT
from schemas.subscriptions import Subscription


class Deliverer:
    def __init__(self) -> None:
        self.receipts: list[Any] = []
        self.settled: list[Any] = []
        self.outbox = SimpleNamespace(settle=lambda *args, **kwargs: self.settled.append(args))

    async def receipt(self, sub: Subscription, delivery: Any, summary: Any, at: datetime, how: str) -> None:
        self.receipts.append(delivery.id)


def test_only_a_delivery_that_carried_the_summary_is_a_receipt() -> None:
    deliverer = Deliverer()
    sender = WebhookSender(deliverer, env={})  # type: ignore[arg-type]
    sub = Subscription(id="gp-pic", org="Y01", events=(PIC_SUMMARY_SENT.type,), mailbox="never-written")
    event = {"id": "e1", "type": PIC_SUMMARY_SENT.type}
    composition, patient = {"resourceType": "Composition", "id": "c"}, {"resourceType": "Patient", "id": "p"}
    letter = SimpleNamespace(id=1, body={"event": event, "resources": [composition], "practice": "Y01"})
    patient_only = SimpleNamespace(id=2, body={"event": event, "resources": [patient], "practice": "Y01"})
    now = datetime(2026, 11, 28, 9, tzinfo=UTC)
    for delivery in (letter, patient_only):
        went = {"resourceType": "Bundle", "entry": [{"resource": r} for r in delivery.body["resources"]]}
        asyncio.run(sender._delivered(sub, delivery, 1, now, "mailbox", went))  # type: ignore[arg-type]
    assert deliverer.receipts == [1]
    assert [args[0] for args in deliverer.settled] == [1, 2]  # both settled as delivered all the same
