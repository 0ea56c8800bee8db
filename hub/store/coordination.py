"""The coordination port on SQLAlchemy: people's coordination state, deadline clocks, processed rows,
and the claims that let one decision of each referral (an `$accept`, a `$decline` or its referrer's
`$withdraw`), one accept of
each person while their episode is open, no accept past a coordinator's caseload cap, and one `$close`
of each episode, win, whichever API worker each reaches.

Writers of one person's state take turns. On PostgreSQL a unit of work holds each state it reads (a
person's, a referral's holder's) until it ends: a row read FOR UPDATE, and a row it read as not there,
by inserting it as it first saves it (_make; ConcurrentWriteError if another worker made it since), so
two workers never both change a state read before the other's commit (since A40 merges, events under a
retired key, read on its partition, write the survivor's state, and the A40, read on the survivor's,
writes the retired key's). A clock is set and cleared only by whoever holds the state of the person
whose task it times, so that also orders the clock's writers. SQLite has one writer at a time (BEGIN
IMMEDIATE). Two workers holding two people in opposite orders: PostgreSQL breaks the deadlock by
ending one transaction, before it has published anything, and that too is ConcurrentWriteError, on
which the consumer redoes its batch (consumers.middlewares.retrying)."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Collection, Iterator
from datetime import datetime
from types import TracebackType
from typing import Any, Self

import sqlalchemy as sa

from hub.core.errors import ConcurrentWriteError
from hub.core.merges import MERGED_INTO
from hub.core.ports import CaseloadFull, Closure, Decline, Json, Withdrawal
from hub.store.merged_people import identities, people_now
from hub.store.sql import _insert, store_errors
from hub.store.tables import (
    coordination_clock,
    coordination_state,
    episode_closure,
    processed_event,
    referral_acceptance,
)

CONSUMER = "coordination"
ACCEPTED, DECLINED, WITHDRAWN = "accepted", "declined", "withdrawn"  # referral_acceptance.outcome
DEADLOCK = "40P01"  # PostgreSQL's SQLSTATE deadlock_detected
S, C, A, E = coordination_state, coordination_clock, referral_acceptance, episode_closure


class SqlCoordinationUnitOfWork:
    """One transaction: state rows, clock rows and processed-event rows commit together."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self._conn: sa.Connection | None = None
        self._states: dict[str, Json] = {}
        self._clocks: dict[str, dict[str, Any] | None] = {}
        self._processed: list[str] = []
        self._held: set[str] = set()  # (PostgreSQL: the people whose states this transaction holds)
        self._read: dict[str, Json] = {}  # (states read and held as their clocks were found, not yet asked for)
        self._unseen: set[str] = set()  # (PostgreSQL: people read as having no state, not held: _make)

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
        self._held.clear()
        self._read.clear()
        self._unseen.clear()

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
        if person_key in self._read:  # (read as its clock was found: due_clocks)
            return self._read.pop(person_key)
        with store_errors(), _deadlocks():
            return self._hold([person_key]).get(person_key)

    def _hold(self, person_keys: Collection[str]) -> dict[str, Json]:
        """Read these people's states, held until this transaction ends. On PostgreSQL, READ COMMITTED
        reads whatever the last writer committed, so without a lock two workers both changed a state
        read before the other's commit, and the later commit undid the other's: a state that is there
        is read FOR UPDATE (the one round trip a plain read takes: it waits for a worker holding it,
        and returns what that worker committed); one that is not is held when it is first saved (_make)."""
        keys = sorted(set(person_keys))
        query = sa.select(S.c.person_key, S.c.state).where(_among(keys)).order_by(S.c.person_key)
        if self.conn.dialect.name != "postgresql":  # (SQLite: BEGIN IMMEDIATE, one writer at a time)
            return {str(k): dict(v) for k, v in self.conn.execute(query)}
        found = {str(k): dict(v) for k, v in self.conn.execute(query.with_for_update())}
        self._held.update(found)
        self._unseen.update(k for k in keys if k not in found and k not in self._held)
        return found

    def save(self, person_key: str, state: Json) -> None:
        if person_key in self._unseen:
            with store_errors(), _deadlocks():
                self._make(person_key)
        self._states[person_key] = state

    def _make(self, person_key: str) -> None:
        """Hold a person read as having no state, as it is first saved, by inserting their row (empty
        until commit writes it: a second worker's insert waits behind it); ConcurrentWriteError, before
        anything is published, where another worker has made it since it was read."""
        made = _insert(self.conn, S).values(person_key=person_key, state={})
        made = made.on_conflict_do_nothing(index_elements=[S.c.person_key]).returning(S.c.person_key)
        if self.conn.scalar(made) is None:
            raise ConcurrentWriteError(
                "another worker gave this person a coordination state while this one read them as having none; retrying"
            )
        self._unseen.discard(person_key)
        self._held.add(person_key)

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
        """(The people of the clocks found are held first (_hold) and the clocks read again, until no
        other person's turns up: a clock is set and cleared by whoever holds the state of its task, so
        one that another worker cleared, or moved to another partition, in between is not fired.)"""
        query = sa.select(C.c.id, C.c.person_key, C.c.due, C.c.kind).where(C.c.partition == partition, C.c.due <= until)
        with store_errors(), _deadlocks():
            found = list(self.conn.execute(query))
            while self.conn.dialect.name == "postgresql" and {r.person_key for r in found} - self._held - self._unseen:
                held = self._hold({str(r.person_key) for r in found} - self._held - self._unseen)
                self._read.update({k: v for k, v in held.items() if k not in self._states})
                found = list(self.conn.execute(query))
        rows = {r.id: (r.id, r.person_key, r.due, r.kind) for r in found}
        for clock_id, pending in self._clocks.items():
            rows.pop(clock_id, None)
            if pending is not None and pending["partition"] == partition and pending["due"] <= until:
                rows[clock_id] = (clock_id, pending["person_key"], pending["due"], pending["kind"])
        return sorted(rows.values(), key=lambda r: (r[2], r[0]))

    def commit(self) -> None:
        conn = self.conn
        try:
            with store_errors(), _deadlocks():
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

    def person_state(self, person_key: str) -> Json | None:
        """The state of the person `person_key` names now: a key an A40 retired is only a pointer, and
        its survivor's state is the person's (followed as the rules engine follows it)."""
        with store_errors(), self.engine.connect() as conn:
            people, states = people_now(conn, [person_key])
        found = states.get(people[person_key])
        return None if found is None or MERGED_INTO in found else found

    def acceptance(self, referral_id: str) -> Json | None:
        """The EpisodeOfCare opened by the accept that claimed this referral, if one has."""
        found = self.decision(referral_id)
        return found if isinstance(found, dict) else None

    def declined(self, referral_id: str) -> Decline | None:
        """The decline that claimed this referral, if one has."""
        found = self.decision(referral_id)
        return found if isinstance(found, Decline) else None

    def withdrawn(self, referral_id: str) -> Withdrawal | None:
        """The withdrawal (by its referrer) that claimed this referral, if one has."""
        found = self.decision(referral_id)
        return found if isinstance(found, Withdrawal) else None

    def decision(self, referral_id: str) -> Json | Decline | Withdrawal | None:
        """What claimed this referral: an accept (the EpisodeOfCare it opened), a decline or a withdrawal."""
        with store_errors(), self.engine.connect() as conn:
            return _decision(conn, referral_id)

    def claim_acceptance(
        self,
        referral_id: str,
        person_key: str,
        coordinator: str,
        episode: Json,
        at: datetime,
        is_open: Callable[[Json], bool],
        cap: int,
    ) -> Json | Decline | Withdrawal | CaseloadFull | None:
        """Claim the referral for one accept, atomically across workers and processes, unless it is
        decided already, another referral's claim for the person has an episode that `is_open`, or the
        coordinator's caseload is at `cap` (_caseload). The person is who the rules engine says `person_key`
        is now: an A40 merged it into its survivor, whose claims, under any key merged into them, count
        (hub.store.merged_people). None: this call claimed it, for `episode`; otherwise what holds the referral, the
        person or the coordinator."""
        keys, known = self._open_claims(person_key, coordinator, is_open)

        def still_open(claimed: Json) -> bool:  # (one claimed since the look: new, so open)
            return known.get(str(claimed.get("id")), True)

        row = {
            "referral_id": referral_id,
            "outcome": "accepted",
            "person_key": person_key,
            "coordinator": coordinator,
            "episode": episode,
            "claimed_at": at,
        }
        with store_errors(), self.engine.connect().execution_options(immediate=True) as conn, conn.begin():
            if conn.dialect.name == "postgresql":  # (SQLite: BEGIN IMMEDIATE, one claim at a time)
                # two claims for one person (under any of their keys) take turns, and two for one
                # coordinator (always in this order)
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_lock_id(keys[0]))))
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_lock_id(coordinator, "caseload"))))
            held = _decision(conn, referral_id)
            if held is not None:
                return held
            others = sa.select(A.c.episode).where(
                A.c.person_key.in_(keys), A.c.referral_id != referral_id, A.c.outcome == ACCEPTED
            )
            person = next((dict(e) for e in conn.scalars(others.order_by(A.c.claimed_at)) if still_open(dict(e))), None)
            if person is not None:
                return person
            people = _caseload(conn, coordinator, still_open)
            if people >= cap:
                return CaseloadFull(coordinator, people)
            if _claimed(conn, row):
                return None
            found = _decision(conn, referral_id)  # (a decline's claim came between: PostgreSQL)
        if found is None:
            raise ConcurrentWriteError(f"the claim of ServiceRequest/{referral_id} was not kept; send it again")
        return found

    def _open_claims(
        self, person_key: str, coordinator: str, is_open: Callable[[Json], bool]
    ) -> tuple[list[str], dict[str, bool]]:
        """The person's keys (the survivor first), and whether each accept's episode that
        an accept for this person and coordinator must weigh is still open, asked before the claim
        takes its locks: `is_open` reads the record on a connection of its own, which a claim holding
        its connection and lock must never wait for (a burst of accepts for one coordinator took every
        pooled connection, each waiting on the lock while the holder waited for a connection). An
        episode the engine's state of its person (followed through merges) lists as closed is not
        asked about. Closing is final, so an answer can only have gone from open to closed since."""
        with store_errors(), self.engine.connect() as conn:
            keys = identities(conn, person_key)
            claims = sa.select(A.c.person_key, A.c.episode).where(
                A.c.outcome == ACCEPTED, sa.or_(A.c.person_key.in_(keys), A.c.coordinator == coordinator)
            )
            found = [(str(p), dict(e)) for p, e in conn.execute(claims)]
            people, states = people_now(conn, [p for p, _ in found])
        known: dict[str, bool] = {}
        for person, episode in found:
            known[str(episode["id"])] = not _closed(states, people[person], episode) and is_open(episode)
        return keys, known

    def sent(self, referral_id: str) -> bool:
        """Whether Kafka acknowledged the events of the decision that claimed this referral."""
        query = sa.select(A.c.published_at).where(A.c.referral_id == referral_id)
        with store_errors(), self.engine.connect() as conn:
            return conn.scalar(query) is not None

    def mark_sent(self, referral_id: str, at: datetime) -> None:
        """Record that Kafka acknowledged (at `at`) the events of the decision that claimed the referral."""
        query = sa.update(A).where(A.c.referral_id == referral_id, A.c.published_at.is_(None))
        with store_errors(), self.engine.connect().execution_options(immediate=True) as conn, conn.begin():
            conn.execute(query.values(published_at=at))

    def unsent_acceptances(self, coordinator: str) -> list[Json]:
        """The episodes of this coordinator's accepts not known sent that the rules engine neither has
        on their caseload nor knows closed: counted against the cap (_caseload) from their claims
        alone, among them any whose events Kafka never took, for the API to publish."""
        with store_errors(), self.engine.connect() as conn:
            return [e for _, e in _waiting(conn, coordinator, _on_caseload(conn, coordinator), unsent=True)]

    def claim_decline(
        self, referral_id: str, person_key: str, decline: Decline, at: datetime
    ) -> Json | Decline | Withdrawal | None:
        """Claim the referral for one decline, atomically across workers and processes (its primary
        key, shared with the accepts' claims). None: this call claimed it; otherwise what did: the
        EpisodeOfCare of the accept, the decline or the withdrawal."""
        return self._claim_outcome(referral_id, person_key, DECLINED, decline.referral, decline.at, at)

    def claim_withdrawal(
        self, referral_id: str, person_key: str, withdrawal: Withdrawal, at: datetime
    ) -> Json | Decline | Withdrawal | None:
        """Claim the referral for its referrer's withdrawal, as a decline claims it (the same primary key,
        so whichever of an accept, a decline and a withdrawal reaches the database first wins)."""
        return self._claim_outcome(referral_id, person_key, WITHDRAWN, withdrawal.referral, withdrawal.at, at)

    def _claim_outcome(
        self, referral_id: str, person_key: str, outcome: str, referral: Json, said_at: datetime, at: datetime
    ) -> Json | Decline | Withdrawal | None:
        """Claim the referral for a decision that opens no episode (a decline's or a withdrawal's row:
        the ServiceRequest as it left it, and when it says it happened)."""
        row = {
            "referral_id": referral_id,
            "outcome": outcome,
            "person_key": person_key,
            "declined": referral,
            "declined_at": said_at,
            "claimed_at": at,
        }
        with store_errors(), self.engine.connect().execution_options(immediate=True) as conn, conn.begin():
            found = _decision(conn, referral_id)
            if found is None and _claimed(conn, row):
                return None
            found = found or _decision(conn, referral_id)
        if found is None:
            raise ConcurrentWriteError(f"the claim of ServiceRequest/{referral_id} was not kept; send it again")
        return found

    def closure(self, episode_id: str) -> Closure | None:
        """The close that claimed this episode, if one has."""
        with store_errors(), self.engine.connect() as conn:
            return _closure(conn, episode_id)

    def claim_closure(self, person_key: str, closure: Closure, at: datetime) -> Closure | None:
        """Claim the episode for one close, atomically across workers and processes (a primary key).
        None: this call claimed it, for `closure`; otherwise the close that did."""
        episode_id = str(closure.episode["id"])
        row = {
            "episode_id": episode_id,
            "person_key": person_key,
            "episode": closure.episode,
            "summary": closure.summary,
            "asked": closure.asked,
            "claimed_at": at,
        }
        with store_errors(), self.engine.connect().execution_options(immediate=True) as conn, conn.begin():
            claim = _insert(conn, E).values(row).on_conflict_do_nothing(index_elements=[E.c.episode_id])
            if conn.execute(claim.returning(E.c.episode_id)).first() is not None:  # (rowcount: -1 on psycopg)
                return None
            found = _closure(conn, episode_id)
        if found is None:
            raise ConcurrentWriteError(f"the claim of EpisodeOfCare/{episode_id} was not kept; send it again")
        return found

    def pending_clocks(self) -> int:
        with store_errors(), self.engine.connect() as conn:
            return int(conn.scalar(sa.select(sa.func.count()).select_from(C)) or 0)


def _lock_id(key: str, kind: str = "referral-acceptance") -> int:
    """A PostgreSQL advisory lock (a person's, by default; a coordinator's caseload): a signed 64-bit
    integer from the key."""
    return int.from_bytes(hashlib.sha256(f"{kind}:{key}".encode()).digest()[:8], signed=True)


def _among(keys: list[str]) -> sa.ColumnElement[bool]:
    """The state rows of these keys (one: `=`, which takes a third less time than `IN` of one)."""
    return S.c.person_key == keys[0] if len(keys) == 1 else S.c.person_key.in_(keys)


@contextlib.contextmanager
def _deadlocks() -> Iterator[None]:
    """A deadlock PostgreSQL broke by ending this transaction (two workers waiting on each other's
    people): ConcurrentWriteError, so that the consumer redoes the batch, not StoreUnavailableError."""
    try:
        yield
    except sa.exc.DBAPIError as exc:
        if getattr(exc.orig, "sqlstate", None) == DEADLOCK:
            raise ConcurrentWriteError(
                "another worker was changing the same people's coordination state; retrying"
            ) from exc
        raise


def _claimed(conn: sa.Connection, row: dict[str, Any]) -> bool:
    """Insert a referral's claim; False where another claim of it is there (committed first)."""
    claim = _insert(conn, A).values(row).on_conflict_do_nothing(index_elements=[A.c.referral_id])
    return conn.execute(claim.returning(A.c.referral_id)).first() is not None  # (rowcount: -1 on psycopg)


def _decision(conn: sa.Connection, referral_id: str) -> Json | Decline | Withdrawal | None:
    """What claimed the referral: the EpisodeOfCare of its accept, its decline or its withdrawal; None: nothing."""
    query = sa.select(A.c.outcome, A.c.episode, A.c.declined, A.c.declined_at).where(A.c.referral_id == referral_id)
    found = conn.execute(query).first()
    if found is None:
        return None
    if found.outcome == DECLINED:
        return Decline(dict(found.declined), found.declined_at)
    if found.outcome == WITHDRAWN:
        return Withdrawal(dict(found.declined), found.declined_at)
    return dict(found.episode)


def _closure(conn: sa.Connection, episode_id: str) -> Closure | None:
    query = sa.select(E.c.episode, E.c.summary, E.c.asked).where(E.c.episode_id == episode_id)
    found = conn.execute(query).first()
    return None if found is None else Closure(dict(found.episode), dict(found.summary), dict(found.asked))


def _caseload(conn: sa.Connection, coordinator: str, is_open: Callable[[Json], bool]) -> int:
    """The people on a coordinator's caseload, as far as anyone knows it: those the rules engine has on
    it, and those whose accept claimed an episode the engine does not have yet, unless it is known
    closed (in the engine's state of the person, or not `is_open` on the record): the record and the
    engine lag the claims by as long as the consumers take. (An episode whose $close is claimed but
    not yet applied still counts: its close may yet be one Kafka did not take.)"""
    people = _on_caseload(conn, coordinator)
    people.update(person for person, episode in _waiting(conn, coordinator, people) if is_open(episode))
    return len(people)


def _on_caseload(conn: sa.Connection, coordinator: str) -> set[str]:
    """The people the rules engine has on the coordinator's caseload."""
    return set(map(str, conn.scalars(sa.select(S.c.person_key).where(S.c.coordinator == coordinator))))


def _waiting(
    conn: sa.Connection, coordinator: str, people: Collection[str], *, unsent: bool = False
) -> list[tuple[str, Json]]:
    """(person, episode) of the coordinator's accepts (`unsent`: only those not known sent) whose person
    is not among `people` (the engine's caseload) and whose episode the engine's state of the person
    does not list as closed. The person is the one the claim's key names now (hub.store.merged_people): an accept
    claimed under a key an A40 has since retired is its survivor's."""
    claims = sa.select(A.c.person_key, A.c.episode).where(
        A.c.coordinator == coordinator, A.c.outcome == ACCEPTED, A.c.person_key.is_not(None)
    )
    if unsent:
        claims = claims.where(A.c.published_at.is_(None))
    found = [(str(p), dict(e)) for p, e in conn.execute(claims)]
    now, states = people_now(conn, [p for p, _ in found])
    waiting = [(now[p], e) for p, e in found if now[p] not in people]
    return [(p, e) for p, e in waiting if not _closed(states, p, e)]


def _closed(states: dict[str, Json], person: str, episode: Json) -> bool:
    """Whether the engine's state of `person` lists the episode as closed."""
    return str(episode["id"]) in ((states.get(person) or {}).get("closed") or ())


def _coordinator(state: Json) -> str | None:
    episode = state.get("episode") or {}
    value = episode.get("coordinator")
    return str(value) if value else None
