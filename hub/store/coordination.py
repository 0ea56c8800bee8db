"""The coordination port on SQLAlchemy: people's coordination state, deadline clocks, processed rows,
and the claims that let one `$accept` of each referral, and of each person while their episode is open, win."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Collection
from datetime import datetime
from types import TracebackType
from typing import Any, Self

import sqlalchemy as sa

from hub.core.errors import ConcurrentWriteError
from hub.core.ports import Json
from hub.store.sql import _insert, store_errors
from hub.store.tables import coordination_clock, coordination_state, processed_event, referral_acceptance

CONSUMER = "coordination"
S, C, A = coordination_state, coordination_clock, referral_acceptance


class SqlCoordinationUnitOfWork:
    """One transaction: state rows, clock rows and processed-event rows commit together."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self._conn: sa.Connection | None = None
        self._states: dict[str, Json] = {}
        self._clocks: dict[str, dict[str, Any] | None] = {}
        self._processed: list[str] = []

    def __enter__(self) -> Self:
        with store_errors():
            self._conn = self.engine.connect().execution_options(immediate=True)
            self._conn.begin()
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(sa.exc.DBAPIError):
                conn.rollback()
            conn.close()
        self._states.clear()
        self._clocks.clear()
        self._processed.clear()

    @property
    def conn(self) -> sa.Connection:
        if self._conn is None:
            raise RuntimeError("unit of work used outside `with`")
        return self._conn

    def processed(self, event_ids: Collection[str]) -> set[str]:
        ids = sorted(set(event_ids))
        found = {e for e in ids if e in self._processed}
        with store_errors():
            for start in range(0, len(ids), 500):
                query = sa.select(processed_event.c.event_id).where(
                    processed_event.c.consumer == CONSUMER, processed_event.c.event_id.in_(ids[start : start + 500])
                )
                found.update(self.conn.scalars(query))
        return found

    def mark_processed(self, event_id: str) -> None:
        self._processed.append(event_id)

    def state(self, person_key: str) -> Json | None:
        if person_key in self._states:
            return self._states[person_key]
        with store_errors():
            found = self.conn.scalar(sa.select(S.c.state).where(S.c.person_key == person_key))
        return dict(found) if found is not None else None

    def save(self, person_key: str, state: Json) -> None:
        self._states[person_key] = state

    def set_clock(self, clock_id: str, person_key: str, due: datetime, kind: str, partition: int) -> None:
        self._clocks[clock_id] = {
            "id": clock_id,
            "person_key": person_key,
            "due": due,
            "kind": kind,
            "partition": partition,
        }

    def clear_clock(self, clock_id: str) -> None:
        self._clocks[clock_id] = None

    def due_clocks(self, partition: int, until: datetime) -> list[tuple[str, str, datetime, str]]:
        query = sa.select(C.c.id, C.c.person_key, C.c.due, C.c.kind).where(C.c.partition == partition, C.c.due <= until)
        with store_errors():
            rows = {r.id: (r.id, r.person_key, r.due, r.kind) for r in self.conn.execute(query)}
        for clock_id, pending in self._clocks.items():
            rows.pop(clock_id, None)
            if pending is not None and pending["partition"] == partition and pending["due"] <= until:
                rows[clock_id] = (clock_id, pending["person_key"], pending["due"], pending["kind"])
        return sorted(rows.values(), key=lambda r: (r[2], r[0]))

    def commit(self) -> None:
        conn = self.conn
        try:
            with store_errors():
                if self._states:
                    stmt = _insert(conn, S)
                    stmt = stmt.on_conflict_do_update(
                        index_elements=[S.c.person_key],
                        set_={"state": stmt.excluded.state, "coordinator": stmt.excluded.coordinator},
                    )
                    rows = [
                        {"person_key": k, "state": v, "coordinator": _coordinator(v)} for k, v in self._states.items()
                    ]
                    conn.execute(stmt, rows)
                gone = [k for k, v in self._clocks.items() if v is None]
                if gone:
                    conn.execute(sa.delete(C).where(C.c.id.in_(gone)))
                kept = [v for v in self._clocks.values() if v is not None]
                if kept:
                    stmt = _insert(conn, C)
                    stmt = stmt.on_conflict_do_update(
                        index_elements=[C.c.id],
                        set_={c: stmt.excluded[c] for c in ("person_key", "due", "kind", "partition")},
                    )
                    conn.execute(stmt, kept)
                if self._processed:
                    conn.execute(
                        sa.insert(processed_event), [{"consumer": CONSUMER, "event_id": e} for e in self._processed]
                    )
                conn.commit()
        except sa.exc.IntegrityError as exc:
            raise ConcurrentWriteError(
                "another worker applied some of these events at the same time; retrying"
            ) from exc


class SqlCoordinationStore:
    """Units of work and the read side (caseloads, a person's tasks) for the API and CLI."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def unit_of_work(self) -> SqlCoordinationUnitOfWork:
        return SqlCoordinationUnitOfWork(self.engine)

    def caseloads(self) -> dict[str, int]:
        """Coordinator -> people on their caseload now (open episodes)."""
        query = (
            sa.select(S.c.coordinator, sa.func.count()).where(S.c.coordinator.is_not(None)).group_by(S.c.coordinator)
        )
        with store_errors(), self.engine.connect() as conn:
            return {str(c): int(n) for c, n in conn.execute(query)}

    def state(self, person_key: str) -> Json | None:
        with store_errors(), self.engine.connect() as conn:
            found = conn.scalar(sa.select(S.c.state).where(S.c.person_key == person_key))
        return dict(found) if found is not None else None

    def acceptance(self, referral_id: str) -> Json | None:
        """The EpisodeOfCare opened by the accept that claimed this referral, if one has."""
        with store_errors(), self.engine.connect() as conn:
            found = conn.scalar(sa.select(A.c.episode).where(A.c.referral_id == referral_id))
        return dict(found) if found is not None else None

    def claim_acceptance(
        self,
        referral_id: str,
        person_key: str,
        coordinator: str,
        episode: Json,
        at: datetime,
        is_open: Callable[[Json], bool],
    ) -> Json | None:
        """Claim the referral for one accept, atomically across workers and processes, unless another
        referral's claim for the person has an episode that `is_open`. None: this call claimed it, for
        `episode`; otherwise the EpisodeOfCare of the accept that holds the referral or the person."""
        row = {
            "referral_id": referral_id,
            "person_key": person_key,
            "coordinator": coordinator,
            "episode": episode,
            "claimed_at": at,
        }
        with store_errors(), self.engine.connect().execution_options(immediate=True) as conn, conn.begin():
            if conn.dialect.name == "postgresql":  # two claims for one person take turns (SQLite: BEGIN IMMEDIATE)
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_lock_id(person_key))))
            held = conn.scalar(sa.select(A.c.episode).where(A.c.referral_id == referral_id))
            if held is None:
                others = sa.select(A.c.episode).where(A.c.person_key == person_key, A.c.referral_id != referral_id)
                held = next((e for e in conn.scalars(others.order_by(A.c.claimed_at)) if is_open(dict(e))), None)
            if held is not None:
                return dict(held)
            claim = _insert(conn, A).values(row).on_conflict_do_nothing(index_elements=[A.c.referral_id])
            if conn.execute(claim.returning(A.c.referral_id)).first() is not None:  # (rowcount: -1 on psycopg)
                return None
            found = conn.execute(sa.select(A.c.episode).where(A.c.referral_id == referral_id)).scalar_one()
        return dict(found)

    def pending_clocks(self) -> int:
        with store_errors(), self.engine.connect() as conn:
            return int(conn.scalar(sa.select(sa.func.count()).select_from(C)) or 0)


def _lock_id(person_key: str) -> int:
    """The person's PostgreSQL advisory lock: a signed 64-bit integer from their key."""
    return int.from_bytes(hashlib.sha256(f"referral-acceptance:{person_key}".encode()).digest()[:8], signed=True)


def _coordinator(state: Json) -> str | None:
    episode = state.get("episode") or {}
    value = episode.get("coordinator")
    return str(value) if value else None
