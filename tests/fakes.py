"""In-memory stand-ins for the delivery stores (hub.store.subscriptions), for tests of one consumer
without a database, and for the broker an intake adapter publishes to."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from hub.store.subscriptions import Delivery
from schemas.subscriptions import Subscription

Json = dict[str, Any]


class KeptSubscriptions:
    """The subscriptions store, as the deliverer and the webhook sender read it."""

    def __init__(self, subs: list[Subscription]) -> None:
        self.subs = subs

    def active(self) -> list[Subscription]:
        return self.subs

    def get(self, id: str) -> Subscription | None:
        return next((s for s in self.subs if s.id == id), None)


class KeptOutbox:
    """The webhook outbox (hub.store.subscriptions.SqlOutbox), in a dict."""

    def __init__(self) -> None:
        self.rows: dict[int, Delivery] = {}

    def enqueue(self, rows: Sequence[Json], *, now: datetime) -> None:
        for row in rows:
            id = len(self.rows) + 1
            fields = (row["subscription_id"], row["event_id"], row["person_key"], row["body"])
            self.rows[id] = Delivery(id, *fields, status="pending", attempts=0, next_attempt_at=now, last_error=None)

    def due(self, now: datetime, limit: int = 50, skip: Collection[str] = ()) -> list[Delivery]:
        pending = [d for d in self.rows.values() if d.status == "pending" and d.subscription_id not in skip]
        first: dict[str, Delivery] = {}  # each subscription's first pending delivery: the later ones wait behind it
        for d in pending:
            first.setdefault(d.subscription_id, d)
        return [d for d in pending if first[d.subscription_id].next_attempt_at <= now][:limit]

    def claim(self, delivery: Delivery, now: datetime) -> Delivery | None:
        row = self.rows[delivery.id]
        if row.status != "pending" or row.attempts != delivery.attempts or row.next_attempt_at > now:
            return None
        self.rows[delivery.id] = dataclasses.replace(row, attempts=row.attempts + 1, next_attempt_at=now)
        return self.rows[delivery.id]

    def settle(
        self,
        id: int,
        *,
        status: str,
        attempts: int,
        next_attempt_at: datetime,
        error: str | None,
        tried: int | None = None,
    ) -> bool:
        row = self.rows[id]
        if row.status != "pending" or tried not in (None, row.attempts):
            return False
        self.rows[id] = dataclasses.replace(
            row, status=status, attempts=attempts, next_attempt_at=next_attempt_at, last_error=error
        )
        return True


class RecordingBroker:
    """What an intake adapter publishes (topic, value, key, headers), as Kafka would have taken it."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes, dict[str, str]]] = []

    async def publish(self, value: bytes, topic: str, *, key: bytes, headers: dict[str, str]) -> None:
        self.sent.append((topic, value, key, headers))

    def on(self, topic: str) -> list[tuple[str, bytes, bytes, dict[str, str]]]:
        return [s for s in self.sent if s[0] == topic]
