"""Subscriptions and the webhook outbox in the database."""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from hub.store.sql import _insert, store_errors
from hub.store.tables import delivery_outbox, subscription
from schemas.subscriptions import Subscription

S, O = subscription, delivery_outbox  # noqa: E741 - table aliases, as in sql.py
# how long a claimed delivery is the claiming sender's: well past one try (bounded at the sender's
# try timeout), so only a sender that died mid-try loses it, and its delivery waits this long
LEASE = timedelta(minutes=2)


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


def _taken(delivery: Delivery) -> Any:
    """The row as `delivery` read it: still pending, tried no more times since."""
    return (O.c.id == delivery.id) & (O.c.status == "pending") & (O.c.attempts == delivery.attempts)


def _due_heads(now: datetime, skip: Collection[str]) -> Any:
    """Each subscription's first pending delivery, where it is due (and not in `skip`), by id.

    The subscriptions with pending deliveries are walked one index probe at a time (a recursive
    query: the next subscription id after the last), and each one's first delivery is one probe
    more, on ix_delivery_outbox_head (status, subscription_id, id): a long backlog costs nothing."""
    pending = O.c.status == "pending"
    subs = sa.select(sa.func.min(O.c.subscription_id).label("sub")).where(pending).cte("subs", recursive=True)
    after = sa.select(sa.func.min(O.c.subscription_id)).where(pending, O.c.subscription_id > subs.c.sub)
    subs = subs.union_all(sa.select(after.scalar_subquery()).where(subs.c.sub.is_not(None)))
    first = sa.select(sa.func.min(O.c.id)).where(pending, O.c.subscription_id == subs.c.sub).scalar_subquery()
    heads = sa.select(first.label("head")).where(subs.c.sub.is_not(None)).subquery()
    query = sa.select(O).join(heads, heads.c.head == O.c.id).where(O.c.next_attempt_at <= now)
    if skip:
        query = query.where(O.c.subscription_id.not_in(list(skip)))
    return query.order_by(O.c.id)


def _leading(conn: sa.Connection, head: Delivery, now: datetime, count: int) -> list[Delivery]:
    """`head` and the pending deliveries after it in its subscription, up to `count`, as far as the
    first one not due."""
    query = (
        sa.select(O)
        .where(O.c.status == "pending", O.c.subscription_id == head.subscription_id, O.c.id >= head.id)
        .order_by(O.c.id)
        .limit(count)
    )
    rows = [_delivery(r) for r in conn.execute(query)]
    return list(itertools.takewhile(lambda d: d.next_attempt_at <= now, rows)) or [head]


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

    def due(
        self, now: datetime, limit: int = 500, per_subscription: int = 10, skip: Collection[str] = ()
    ) -> list[Delivery]:
        """Each subscription's leading pending deliveries, oldest first, where its first is due by
        `now`: at most `per_subscription` of each, `limit` in all, none of those in `skip` (being
        sent already). A subscription whose first pending delivery is backing off, or is being sent
        (claimed), has none due: its later ones wait behind it, so a receiver gets them in order."""
        with store_errors(), self.engine.connect() as conn:
            heads = conn.execute(_due_heads(now, skip)).all()
            due = [_delivery(r) for r in heads[:limit]]
            if per_subscription > 1:
                due = [d for head in due for d in _leading(conn, head, now, per_subscription)]
        return due[:limit]

    def claim(self, delivery: Delivery, now: datetime, lease: timedelta = LEASE) -> Delivery | None:
        """Take a due delivery for one try, as read: its try counted and its next attempt moved past
        the try (by `lease`), so no other sender, in this process or another, finds it due meanwhile;
        if the sender dies mid-try, it is due again once the lease ends. None if another sender
        took it first (or it is not due, or is no longer pending)."""
        claimed = _taken(delivery) & (O.c.next_attempt_at <= now)
        attempts, until = delivery.attempts + 1, now + lease
        if not self._changed(sa.update(O).where(claimed).values(attempts=attempts, next_attempt_at=until)):
            return None
        return dataclasses.replace(delivery, attempts=attempts, next_attempt_at=until)

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
        """Settle a pending delivery (a sender's: one it claimed, `tried` the tries its claim counted);
        False, and nothing changed, where it is no longer pending (settled already) or was claimed
        again since (by another sender, after this one's lease ended)."""
        mine = (O.c.id == id) & (O.c.status == "pending")
        if tried is not None:
            mine &= O.c.attempts == tried
        values = {"status": status, "attempts": attempts, "next_attempt_at": next_attempt_at}
        stmt = sa.update(O).where(mine).values(**values, last_error=(error or None) and error[:500])
        return self._changed(stmt)

    def _changed(self, stmt: Any) -> bool:
        with store_errors(), self.engine.connect().execution_options(immediate=True) as conn:
            conn.begin()
            count = conn.execute(stmt).rowcount
            conn.commit()
        return bool(count)

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
