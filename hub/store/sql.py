"""SQLAlchemy 2 Core implementations of the record ports (SQLite and PostgreSQL).

The unit of work stages writes in memory and flushes them in bulk at commit (one upsert for the
resources, one insert for the identifier index, one for processed-event rows), so a batch of
hundreds of events costs a handful of statements.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Collection, Iterator, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Self

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from hub.core.errors import ConcurrentWriteError, StoreUnavailableError, kept_in_part
from hub.core.huddle import ODS_SYSTEM, practice_codes, practice_refs
from hub.core.ports import Json, StoredResource
from hub.core.record import SHARED_KINDS, reconcile_reference_data
from hub.store.tables import dead_letter, processed_event, record_identifier, record_resource

_CHUNK = 500
R = record_resource
_SHARED_LOCKS = 0x43_52_65_66  # "CRef": the advisory lock space of shared reference data rows


@contextlib.contextmanager
def store_errors() -> Iterator[None]:
    """Database outages become StoreUnavailableError (retried by consumers, 503 at the API)."""
    try:
        yield
    except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
        raise StoreUnavailableError(f"database unavailable: {type(exc.orig).__name__}") from exc
    except sa.exc.TimeoutError as exc:  # (every pooled connection in use for the pool's timeout)
        raise StoreUnavailableError("database busy: no connection free in the pool") from exc
    except sa.exc.DBAPIError as exc:
        if exc.connection_invalidated:
            raise StoreUnavailableError("database connection lost") from exc
        raise


def _insert(engine: sa.Engine | sa.Connection, table: sa.Table) -> Any:
    dialect = engine.dialect.name
    if dialect == "sqlite":
        return sqlite.insert(table)
    if dialect == "postgresql":
        return postgresql.insert(table)
    raise NotImplementedError(f"database {dialect} is not supported (SQLite or PostgreSQL)")


def _row(resource: StoredResource) -> dict[str, Any]:
    return {
        "resource_type": resource.resource_type,
        "id": resource.id,
        "person_key": resource.person_key,
        "version_id": resource.version_id,
        "event_time": resource.event_time,
        "source_event_id": resource.source_event_id,
        "content": resource.content,
    }


def _stored(row: Any) -> StoredResource:
    return StoredResource(
        resource_type=row.resource_type,
        id=row.id,
        person_key=row.person_key,
        version_id=row.version_id,
        event_time=row.event_time,
        source_event_id=row.source_event_id,
        content=row.content,
    )


def identifiers_of(content: Json) -> set[tuple[str, str]]:
    """(system, value) pairs of a resource's identifiers, as indexed for search."""
    found = content.get("identifier") or []
    if isinstance(found, dict):
        found = [found]
    return {
        (str(i["system"])[:255], str(i["value"])[:255])
        for i in found
        if isinstance(i, dict) and i.get("system") and i.get("value")
    }


def _lock_slot(resource_type: str, id: str) -> int:
    """A row's advisory lock within _SHARED_LOCKS (a shared slot only makes two rows wait for each other)."""
    digest = hashlib.blake2b(f"{resource_type}/{id}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big", signed=True)


def _chunks(items: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


class SqlRecordUnitOfWork:
    """One database transaction over the record for one consumer (processed rows are per consumer)."""

    def __init__(self, engine: sa.Engine, consumer: str = "record") -> None:
        self.engine = engine
        self.consumer = consumer
        self._conn: sa.Connection | None = None
        self._pending: dict[tuple[str, str], StoredResource] = {}
        self._pending_by_identifier: dict[tuple[str, str, str], set[tuple[str, str]]] = {}
        self._loaded: dict[tuple[str, str], StoredResource | None] = {}
        self._processed: list[str] = []

    def __enter__(self) -> Self:
        with store_errors():
            self._conn = self.engine.connect().execution_options(immediate=True)
            self._conn.begin()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(sa.exc.DBAPIError):
                conn.rollback()  # a no-op after commit
            conn.close()
        self._pending.clear()
        self._pending_by_identifier.clear()
        self._loaded.clear()
        self._processed.clear()

    @property
    def conn(self) -> sa.Connection:
        if self._conn is None:
            raise RuntimeError("unit of work used outside `with`")
        return self._conn

    def processed(self, event_ids: Collection[str]) -> set[str]:
        ids = sorted(set(event_ids))
        found: set[str] = {e for e in ids if e in self._processed}
        table = processed_event
        with store_errors():
            for chunk in _chunks(ids):
                query = sa.select(table.c.event_id).where(
                    table.c.consumer == self.consumer, table.c.event_id.in_(chunk)
                )
                found.update(self.conn.scalars(query))
        return found

    def get(self, resource_type: str, id: str) -> StoredResource | None:
        key = (resource_type, id)
        if key in self._pending:
            return self._pending[key]
        if key not in self._loaded:
            query = sa.select(R).where(R.c.resource_type == resource_type, R.c.id == id)
            with store_errors():
                row = self.conn.execute(query).first()
            self._loaded[key] = _stored(row) if row else None
        return self._loaded[key]

    def get_many(self, resource_type: str, ids: Collection[str]) -> dict[str, StoredResource]:
        """get() for many ids: those not pending nor read yet in one query a chunk (and remembered)."""
        known = self._pending.keys() | self._loaded.keys()
        wanted = sorted({i for i in ids if (resource_type, i) not in known})
        with store_errors():
            for chunk in _chunks(wanted):
                query = sa.select(R).where(R.c.resource_type == resource_type, R.c.id.in_(chunk))
                found = {r.id: _stored(r) for r in self.conn.execute(query)}
                self._loaded.update(((resource_type, i), found.get(i)) for i in chunk)
        return {i: held for i in ids if (held := self.get(resource_type, i)) is not None}

    def find_by_identifier(self, resource_type: str, system: str, value: str) -> list[StoredResource]:
        return self.find_by_identifiers(resource_type, [(system, value)]).get((system, value), [])

    def find_by_identifiers(
        self, resource_type: str, pairs: Collection[tuple[str, str]]
    ) -> dict[tuple[str, str], list[StoredResource]]:
        """find_by_identifier for many (system, value) pairs, in one query a chunk; those found, by pair."""
        I = record_identifier  # noqa: E741, N806
        wanted = set(pairs)
        systems = sorted({s for s, _ in wanted})  # (a few: the index is searched by system, then value)
        rows: dict[tuple[str, str], dict[tuple[str, str], StoredResource]] = {}
        with store_errors():
            for chunk in _chunks(sorted({v for _, v in wanted})):
                query = (
                    sa.select(R, I.c.system.label("found_system"), I.c.value.label("found_value"))
                    .join(I, sa.and_(I.c.resource_type == R.c.resource_type, I.c.resource_id == R.c.id))
                    .where(I.c.resource_type == resource_type, I.c.system.in_(systems), I.c.value.in_(chunk))
                )
                for r in self.conn.execute(query):
                    if (r.found_system, r.found_value) in wanted:
                        rows.setdefault((r.found_system, r.found_value), {})[(r.resource_type, r.id)] = _stored(r)
        for pair in pairs:  # what this transaction wrote wins over what is committed
            held = rows.get(pair, {})
            for key in [k for k in held if k in self._pending]:
                del held[key]  # (added back below if its pending version still carries the pair)
            for key in self._pending_by_identifier.get((resource_type, *pair), ()):
                pending = self._pending.get(key)
                if pending is not None and pair in identifiers_of(pending.content):
                    held[key] = pending
            if held:
                rows[pair] = held
        return {pair: sorted(held.values(), key=lambda r: r.id) for pair, held in rows.items() if held}

    def of_person(self, person_key: str, kind: str | None = None) -> list[StoredResource]:
        query = sa.select(R).where(R.c.person_key == person_key)
        if kind is not None:
            query = query.where(R.c.resource_type == kind)
        with store_errors():
            rows = {(r.resource_type, r.id): _stored(r) for r in self.conn.execute(query)}
        for key, pending in self._pending.items():
            if kind is not None and key[0] != kind:
                continue
            if pending.person_key == person_key:
                rows[key] = pending
            else:
                rows.pop(key, None)
        return sorted(rows.values(), key=lambda r: (r.resource_type, r.id))

    def put(self, resource: StoredResource) -> None:
        key = (resource.resource_type, resource.id)
        self._pending[key] = resource
        for system, value in identifiers_of(resource.content):  # (an entry left stale is checked on use)
            self._pending_by_identifier.setdefault((resource.resource_type, system, value), set()).add(key)

    def mark_processed(self, event_id: str) -> None:
        self._processed.append(event_id)

    def commit(self) -> None:
        try:
            with store_errors():
                self._flush()
                self.conn.commit()
        except sa.exc.IntegrityError as exc:
            raise ConcurrentWriteError(
                "another worker applied some of these events at the same time; retrying"
            ) from exc

    def _flush(self) -> None:
        conn = self.conn
        if conn.dialect.name == "postgresql":
            self._reconcile_shared(conn)
        rows = [_row(r) for r in self._pending.values()]
        if rows:
            stmt = _insert(conn, R)
            columns = ("person_key", "version_id", "event_time", "source_event_id", "content")
            stmt = stmt.on_conflict_do_update(
                index_elements=[R.c.resource_type, R.c.id],
                set_={c: stmt.excluded[c] for c in columns},
                where=R.c.event_time <= stmt.excluded.event_time,
            )
            for chunk in _chunks(rows):
                conn.execute(stmt, list(chunk))
            self._reindex(conn)
        if self._processed:
            values = [{"consumer": self.consumer, "event_id": e} for e in self._processed]
            for chunk in _chunks(values):
                conn.execute(sa.insert(processed_event), list(chunk))
        self._loaded.update(self._pending)
        self._pending.clear()
        self._pending_by_identifier.clear()
        self._processed.clear()

    def _reconcile_shared(self, conn: sa.Connection) -> None:
        """Reference data (a GP practice) is shared by people on every partition, so on PostgreSQL
        two workers can write its row in overlapping transactions (SQLite runs them one at a time).
        Here, under a lock per row held to commit, each row is taken as it now stands and, where
        another worker committed it since this one read it, the two are reconciled as one worker
        reading both events would have (the upsert alone kept whichever committed first, when the
        second was retimed or said earlier). Locks are taken in one order, so never deadlock."""
        keys = [k for k in self._pending if k[0] in SHARED_KINDS]
        if not keys:
            return
        slots = sorted({_lock_slot(*k) for k in keys})
        lock = sa.text("SELECT count(pg_advisory_xact_lock(:space, s)) FROM unnest(CAST(:slots AS integer[])) AS s")
        with store_errors():
            conn.execute(lock, {"space": _SHARED_LOCKS, "slots": slots})
            now: dict[tuple[str, str], StoredResource] = {}
            for kind in sorted({k[0] for k in keys}):
                ids = sorted(rid for k, rid in keys if k == kind)
                for chunk in _chunks(ids):
                    query = sa.select(R).where(R.c.resource_type == kind, R.c.id.in_(chunk))
                    now.update(((r.resource_type, r.id), _stored(r)) for r in conn.execute(query))
        for key in keys:
            if now.get(key) != self._loaded.get(key):  # committed by another worker since read here
                self._pending[key] = reconcile_reference_data(now.get(key), self._pending[key])

    def _reindex(self, conn: sa.Connection) -> None:
        I = record_identifier  # noqa: E741, N806
        by_type: dict[str, list[str]] = {}
        for kind, rid in self._pending:
            by_type.setdefault(kind, []).append(rid)
        for kind, ids in by_type.items():
            for chunk in _chunks(ids):
                conn.execute(sa.delete(I).where(I.c.resource_type == kind, I.c.resource_id.in_(chunk)))
        values = [
            {"resource_type": r.resource_type, "resource_id": r.id, "system": s, "value": v}
            for r in self._pending.values()
            for s, v in sorted(identifiers_of(r.content))
        ]
        if values:
            stmt = _insert(conn, I).on_conflict_do_nothing()
            for chunk in _chunks(values):
                conn.execute(stmt, list(chunk))


class SqlRecordReader:
    """Read side for the API, the CLI and pages: current versions as FHIR JSON."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def _all(self, query: sa.Select[Any]) -> list[Json]:
        with store_errors(), self.engine.connect() as conn:
            return [dict(c) for c in conn.scalars(query)]

    def read(self, resource_type: str, id: str) -> Json | None:
        found = self._all(sa.select(R.c.content).where(R.c.resource_type == resource_type, R.c.id == id))
        return found[0] if found else None

    def patients_by_identifier(self, system: str, value: str) -> list[Json]:
        I = record_identifier  # noqa: E741, N806
        query = (
            sa.select(R.c.content)
            .join(I, sa.and_(I.c.resource_type == R.c.resource_type, I.c.resource_id == R.c.id))
            .where(I.c.resource_type == "Patient", I.c.system == system, I.c.value == value)
            .order_by(R.c.id)
        )
        return self._all(query)

    def search(self, resource_type: str, patient_id: str | None) -> list[Json]:
        query = sa.select(R.c.content).where(R.c.resource_type == resource_type)
        if patient_id is not None:
            query = query.where(R.c.person_key == patient_id)
        return self._all(query.order_by(R.c.event_time, R.c.id))

    def filed_under(self, patient_ids: Collection[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for chunk in _chunks(sorted(patient_ids)):
            query = sa.select(R.c.id, R.c.person_key).where(R.c.resource_type == "Patient", R.c.id.in_(chunk))
            with store_errors(), self.engine.connect() as conn:
                found.update((row.id, row.person_key or row.id) for row in conn.execute(query))
        return found

    def search_many(self, resource_type: str, patient_ids: Sequence[str]) -> list[Json]:
        found: list[Json] = []
        for chunk in _chunks(list(patient_ids)):
            query = sa.select(R.c.content).where(R.c.resource_type == resource_type, R.c.person_key.in_(chunk))
            found += self._all(query.order_by(R.c.event_time, R.c.id))
        return found

    def everything(self, patient_id: str) -> list[Json]:
        patient = self.read("Patient", patient_id)
        if patient is None:
            return []
        query = (
            sa.select(R.c.content)
            .where(R.c.person_key == patient_id)
            .where(sa.or_(R.c.resource_type != "Patient", R.c.id != patient_id))
            .order_by(R.c.resource_type, R.c.event_time, R.c.id)
        )
        theirs = self._all(query)
        return [patient, *self._practices(patient), *theirs]

    def _practices(self, patient: Json) -> list[Json]:
        """The Organizations the record holds for a Patient's generalPractitioner: by reference, or by
        ODS code for one named by identifier (a practice's register row names it so)."""
        refs, codes = practice_refs(patient)
        ids = list(refs)
        if codes:
            I = record_identifier  # noqa: E741, N806
            named = sa.select(I.c.resource_id).where(
                I.c.resource_type == "Organization", I.c.system == ODS_SYSTEM, I.c.value.in_(sorted(codes))
            )
            with store_errors(), self.engine.connect() as conn:
                ids += [i for i in conn.scalars(named.order_by(I.c.resource_id)) if i not in refs]
        return [org for i in ids if (org := self.read("Organization", i)) is not None]

    def registered_with(self, practice_ods: str) -> list[Json]:
        # No index on generalPractitioner: a text match narrows the Patients, the core's rule decides.
        I = record_identifier  # noqa: E741, N806
        orgs = sa.select(I.c.resource_id).where(
            I.c.resource_type == "Organization", I.c.system == ODS_SYSTEM, I.c.value == practice_ods
        )
        with store_errors(), self.engine.connect() as conn:
            refs = {f"Organization/{rid}" for rid in conn.scalars(orgs)}
        text = sa.cast(R.c.content, sa.Text)
        needles = [sa.or_(*(text.contains(n, autoescape=True) for n in [practice_ods, *sorted(refs)]))]
        query = sa.select(R.c.content).where(R.c.resource_type == "Patient", *needles).order_by(R.c.id)
        known = {ref: {"identifier": [{"system": ODS_SYSTEM, "value": practice_ods}]} for ref in refs}
        return [p for p in self._all(query) if practice_ods in practice_codes(p, known)]

    def counts(self) -> dict[str, int]:
        query = sa.select(R.c.resource_type, sa.func.count()).group_by(R.c.resource_type)
        with store_errors(), self.engine.connect() as conn:
            return {kind: n for kind, n in conn.execute(query)}


def content_key(source: str, digest: str) -> str:
    """The key that keeps rejected input once per source and content, however often it is sent (its
    time, its path or the sender's port differ): a sender retrying a message, or a file sent again,
    counts on one entry (hub.store.dead_letter_status reopens it if it had been resolved)."""
    return hashlib.sha256(f"{source[:255]}\n{digest}".encode()).hexdigest()


def input_digest(reason: Json, payload: bytes) -> str:
    """The SHA-256 of the input a dead letter keeps: of its content, or, kept in part (its head), of the
    whole input its reason names (hub.core.errors.kept_in_part), so the same input is known again."""
    partial = kept_in_part(reason)
    return partial[1] if partial is not None else hashlib.sha256(payload).hexdigest()


class SqlDeadLetters:
    """The dead-letter store: rejected input kept whole, once per source and content (the same input
    refused again counted on its entry, and outstanding again if it had been resolved); input kept in
    part is known by the whole input's digest."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def keep(self, *, received_at: datetime, source: str, origin: str, reason: Json, payload: bytes) -> None:
        digest = input_digest(reason, payload)
        key = content_key(source, digest)
        row = {
            "received_at": received_at,
            "source": source[:255],
            "origin": origin[:255],
            "digest": digest,
            "content_key": key,
            "reason": reason,
            "payload": payload,
        }
        stmt = _insert(self.engine, dead_letter).on_conflict_do_nothing().returning(dead_letter.c.id)  # (either key)
        D = dead_letter  # noqa: N806
        same = sa.select(D.c.id).where(
            D.c.origin == row["origin"], D.c.digest == digest, D.c.received_at == received_at
        )
        with store_errors(), self.engine.connect().execution_options(immediate=True) as conn:
            conn.begin()
            for _ in range(3):  # (a purge may delete the entry between the insert and the count: insert again)
                if conn.execute(stmt, row).first() is not None or _refused_again(conn, key, received_at, reason):
                    break
                if conn.execute(same).first() is not None:
                    break  # (this refusal, kept before migration 0015 under origin, content and time)
            conn.commit()

    def holds(self, *, source: str, payload: bytes) -> bool:
        """True when input with this source and content is kept already (whatever its origin or time)
        and outstanding: one an operator resolved is to be kept again, which makes it outstanding again."""
        D = dead_letter  # noqa: N806
        digest = hashlib.sha256(payload).hexdigest()
        query = sa.select(D.c.id).where(D.c.digest == digest, D.c.source == source[:255], D.c.resolved_at.is_(None))
        query = query.limit(1)
        with store_errors(), self.engine.connect() as conn:
            return conn.execute(query).first() is not None

    def recent(self, limit: int) -> list[Json]:
        D = dead_letter  # noqa: N806
        query = sa.select(D).order_by(D.c.id.desc()).limit(limit)
        with store_errors(), self.engine.connect() as conn:
            return [
                {
                    "received_at": r.received_at,
                    "source": r.source,
                    "origin": r.origin,
                    "reason": r.reason,
                    "payload": bytes(r.payload),
                    "refused_times": r.refused_times,
                }
                for r in conn.execute(query)
            ]


def _refused_again(conn: sa.Connection, key: str, at: datetime, reason: Json) -> bool:
    """Input kept already refused again: counted on its entry, with when it last came and why (the
    newest reason; where it came from first stays, as the entry's origin); outstanding again if an
    operator had resolved it before this refusal, since what they did did not stop it coming. Only a
    refusal later than any counted is counted: the dead-letter topic is read at least once, and a
    redelivery (or a re-read of the topic) brings back refusals counted already. False when no entry
    holds the key (none yet, or purged meanwhile)."""
    D = dead_letter  # noqa: N806
    query = sa.select(D.c.id, D.c.received_at, D.c.last_received_at, D.c.resolved_at).where(D.c.content_key == key)
    held = conn.execute(query.with_for_update()).first()
    if held is None:
        return False
    if at <= (held.last_received_at or held.received_at):
        return True  # (counted already, or an older refusal delivered late: its entry says newer)
    values: dict[str, Any] = {"refused_times": D.c.refused_times + 1, "last_received_at": at, "reason": reason}
    if held.resolved_at is not None and at > held.resolved_at:
        values |= {"resolved_at": None, "resolved_by": None, "resolution": None}
    conn.execute(sa.update(D).where(D.c.id == held.id).values(**values))
    return True
