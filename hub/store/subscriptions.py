"""Subscriptions and the webhook outbox in the database."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from hub.store.sql import _insert, store_errors
from hub.store.tables import delivery_outbox, subscription
from schemas.subscriptions import Subscription

S, O = subscription, delivery_outbox  # noqa: E741 - table aliases, as in sql.py


class SqlSubscriptions:
    """Subscriptions by id (a reload replaces the definition); active ones cached for `ttl` seconds."""

    def __init__(self, engine: sa.Engine, *, ttl: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.engine = engine
        self._ttl = ttl
        self._clock = clock
        self._cached: tuple[float, list[Subscription]] | None = None

    def save(self, sub: Subscription, *, active: bool = True) -> None:
        stmt = _insert(self.engine, S).values(id=sub.id, document=sub.model_dump(mode="json"), active=active)
        stmt = stmt.on_conflict_do_update(
            index_elements=[S.c.id], set_={"document": stmt.excluded.document, "active": active}
        )
        with store_errors(), self.engine.connect().execution_options(immediate=True) as conn:
            conn.begin()
            conn.execute(stmt)
            conn.commit()
        self._cached = None

    def all(self) -> list[tuple[Subscription, bool]]:
        with store_errors(), self.engine.connect() as conn:
            rows = conn.execute(sa.select(S.c.document, S.c.active).order_by(S.c.id)).all()
        return [(Subscription.model_validate(d), bool(a)) for d, a in rows]

    def active(self) -> list[Subscription]:
        now = self._clock()
        if self._cached is None or now - self._cached[0] > self._ttl:
            self._cached = (now, [s for s, on in self.all() if on])
        return self._cached[1]

    def get(self, id: str) -> Subscription | None:
        return next((s for s, _ in self.all() if s.id == id), None)


@dataclass(frozen=True)
class Delivery:
    """One webhook delivery in the outbox."""

    id: int
    subscription_id: str
    event_id: str
    person_key: str | None
    body: dict[str, Any]
    status: str
    attempts: int
    next_attempt_at: datetime
    last_error: str | None


def _delivery(row: Any) -> Delivery:
    return Delivery(
        row.id, row.subscription_id, row.event_id, row.person_key, row.body, row.status, row.attempts,
        row.next_attempt_at, row.last_error,
    )  # fmt: skip


class SqlOutbox:
    """Webhook deliveries waiting, done, failed or withheld; each (subscription, event) once."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def _write(self, stmt: Any, params: Any = None) -> None:
        with store_errors(), self.engine.connect().execution_options(immediate=True) as conn:
            conn.begin()
            conn.execute(stmt, params) if params is not None else conn.execute(stmt)
            conn.commit()

    def enqueue(self, rows: Sequence[dict[str, Any]], *, now: datetime) -> None:
        """Add deliveries; a (subscription, event) already queued is left as it is (redelivered events)."""
        if rows:
            values = [
                {**r, "status": "pending", "attempts": 0, "next_attempt_at": now, "last_error": None} for r in rows
            ]
            self._write(_insert(self.engine, O).on_conflict_do_nothing(), values)

    def due(self, now: datetime, limit: int = 500, per_subscription: int = 10) -> list[Delivery]:
        """Pending deliveries due by `now`, oldest first: at most `per_subscription` of each
        subscription's, so one with a long queue (its endpoint slow or down) never fills the read
        and hides another's."""
        pending = sa.and_(O.c.status == "pending", O.c.next_attempt_at <= now)
        place = sa.func.row_number().over(partition_by=O.c.subscription_id, order_by=O.c.id)
        ranked = sa.select(O.c.id, place.label("place")).where(pending).subquery()
        query = (
            sa.select(O)
            .join(ranked, ranked.c.id == O.c.id)
            .where(ranked.c.place <= per_subscription)
            .order_by(O.c.id)
            .limit(limit)
        )
        with store_errors(), self.engine.connect() as conn:
            return [_delivery(r) for r in conn.execute(query)]

    def settle(self, id: int, *, status: str, attempts: int, next_attempt_at: datetime, error: str | None) -> None:
        self._write(
            sa.update(O)
            .where(O.c.id == id)
            .values(
                status=status,
                attempts=attempts,
                next_attempt_at=next_attempt_at,
                last_error=(error or None) and error[:500],
            )
        )

    def listing(self, status: str | None = None, limit: int = 100) -> list[Delivery]:
        query = sa.select(O).order_by(O.c.id.desc()).limit(limit)
        if status:
            query = query.where(O.c.status == status)
        with store_errors(), self.engine.connect() as conn:
            return [_delivery(r) for r in conn.execute(query)]

    def redeliver(self, ids: Sequence[int] | None, *, now: datetime) -> int:
        """Put failed deliveries back in the queue (all failed ones when ids is None); how many."""
        stmt = sa.update(O).where(O.c.status == "failed")
        if ids is not None:
            stmt = stmt.where(O.c.id.in_(list(ids)))
        stmt = stmt.values(status="pending", attempts=0, next_attempt_at=now, last_error=None)
        with store_errors(), self.engine.connect().execution_options(immediate=True) as conn:
            conn.begin()
            count = conn.execute(stmt).rowcount
            conn.commit()
        return int(count or 0)
