"""In-memory fakes of the record ports, for unit tests and the AsyncAPI generator (cosmicpython's
FakeRepository): the same contract tests run against these and the SQL stores."""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Collection, Iterator, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Self

from hub.core.delivery import Registration
from hub.core.huddle import ODS_SYSTEM, practice_codes, practice_refs
from hub.core.ledger import Disclosure, Entry, seal
from hub.core.ports import Json, StoredResource
from hub.store.registrations import as_of, kept_over, snapshots_after
from hub.store.sql import content_key, identifiers_of, input_digest


class MemoryRecordStore:
    """Committed state; `unit_of_work()` gives a transaction over it."""

    def __init__(self) -> None:
        self.resources: dict[tuple[str, str], StoredResource] = {}
        self.processed: set[tuple[str, str]] = set()

    def unit_of_work(self, consumer: str = "record") -> MemoryRecordUnitOfWork:
        return MemoryRecordUnitOfWork(self, consumer)

    def reader(self) -> MemoryRecordReader:
        return MemoryRecordReader(self)


class MemoryRecordUnitOfWork:
    """Stages writes; commit applies them all, exit without commit drops them."""

    def __init__(self, store: MemoryRecordStore, consumer: str) -> None:
        self.store = store
        self.consumer = consumer
        self._pending: dict[tuple[str, str], StoredResource] = {}
        self._processed: list[str] = []
        self.committed = False

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._pending.clear()
        self._processed.clear()

    def processed(self, event_ids: Collection[str]) -> set[str]:
        return {e for e in event_ids if (self.consumer, e) in self.store.processed or e in self._processed}

    def _view(self) -> dict[tuple[str, str], StoredResource]:
        return {**self.store.resources, **self._pending}

    def get(self, resource_type: str, id: str) -> StoredResource | None:
        return self._view().get((resource_type, id))

    def find_by_identifier(self, resource_type: str, system: str, value: str) -> list[StoredResource]:
        return sorted(
            (
                r
                for (kind, _), r in self._view().items()
                if kind == resource_type and (system, value) in identifiers_of(r.content)
            ),
            key=lambda r: r.id,
        )

    def get_many(self, resource_type: str, ids: Collection[str]) -> dict[str, StoredResource]:
        view = self._view()
        return {i: held for i in ids if (held := view.get((resource_type, i))) is not None}

    def find_by_identifiers(
        self, resource_type: str, pairs: Collection[tuple[str, str]]
    ) -> dict[tuple[str, str], list[StoredResource]]:
        wanted, found = set(pairs), dict[tuple[str, str], list[StoredResource]]()
        for (kind, _), r in sorted(self._view().items()):  # (one pass, in id order)
            for pair in identifiers_of(r.content) & wanted if kind == resource_type else ():
                found.setdefault(pair, []).append(r)
        return found

    def of_person(self, person_key: str, kind: str | None = None) -> list[StoredResource]:
        return sorted(
            (r for r in self._view().values() if r.person_key == person_key and kind in (None, r.resource_type)),
            key=lambda r: (r.resource_type, r.id),
        )

    def put(self, resource: StoredResource) -> None:
        self._pending[(resource.resource_type, resource.id)] = copy.deepcopy(resource)

    def mark_processed(self, event_id: str) -> None:
        self._processed.append(event_id)

    def commit(self) -> None:
        if any((self.consumer, e) in self.store.processed for e in self._processed):
            from hub.core.errors import ConcurrentWriteError

            raise ConcurrentWriteError("another worker applied some of these events at the same time")
        for key, resource in self._pending.items():
            current = self.store.resources.get(key)
            if current is None or current.event_time <= resource.event_time:
                self.store.resources[key] = resource
        self.store.processed.update((self.consumer, e) for e in self._processed)
        self._pending.clear()
        self._processed.clear()
        self.committed = True


class MemoryRecordReader:
    """The read side over a MemoryRecordStore, same answers as SqlRecordReader."""

    def __init__(self, store: MemoryRecordStore) -> None:
        self.store = store

    def read(self, resource_type: str, id: str) -> Json | None:
        found = self.store.resources.get((resource_type, id))
        return copy.deepcopy(found.content) if found else None

    def patients_by_identifier(self, system: str, value: str) -> list[Json]:
        return [
            copy.deepcopy(r.content)
            for (kind, _), r in sorted(self.store.resources.items())
            if kind == "Patient" and (system, value) in identifiers_of(r.content)
        ]

    def search(self, resource_type: str, patient_id: str | None) -> list[Json]:
        found = [
            r
            for (kind, _), r in self.store.resources.items()
            if kind == resource_type and (patient_id is None or r.person_key == patient_id)
        ]
        return [copy.deepcopy(r.content) for r in sorted(found, key=lambda r: (r.event_time, r.id))]

    def filed_under(self, patient_ids: Collection[str]) -> dict[str, str]:
        held = self.store.resources
        return {k: r.person_key or k for k in patient_ids if (r := held.get(("Patient", k))) is not None}

    def search_many(self, resource_type: str, patient_ids: Sequence[str]) -> list[Json]:
        wanted = set(patient_ids)
        found = [r for (kind, _), r in self.store.resources.items() if kind == resource_type and r.person_key in wanted]
        return [copy.deepcopy(r.content) for r in sorted(found, key=lambda r: (r.event_time, r.id))]

    def everything(self, patient_id: str) -> list[Json]:
        patient = self.read("Patient", patient_id)
        if patient is None:
            return []
        theirs = sorted(
            (
                r
                for r in self.store.resources.values()
                if r.person_key == patient_id and (r.resource_type, r.id) != ("Patient", patient_id)
            ),
            key=lambda r: (r.resource_type, r.event_time, r.id),
        )
        refs, codes = practice_refs(patient)
        named = sorted(
            rid
            for (kind, rid), r in self.store.resources.items()
            if kind == "Organization"
            and rid not in refs
            and any((ODS_SYSTEM, c) in identifiers_of(r.content) for c in codes)
        )
        practices = [org for i in [*refs, *named] if (org := self.read("Organization", i)) is not None]
        return [patient, *practices, *(copy.deepcopy(r.content) for r in theirs)]

    def registered_with(self, practice_ods: str) -> list[Json]:
        held = self.store.resources.items()
        organizations = {f"Organization/{rid}": r.content for (kind, rid), r in held if kind == "Organization"}
        return [
            copy.deepcopy(r.content)
            for (kind, _), r in sorted(self.store.resources.items())
            if kind == "Patient" and practice_ods in practice_codes(r.content, organizations)
        ]

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for kind, _ in self.store.resources:
            counts[kind] = counts.get(kind, 0) + 1
        return counts


class MemoryDeadLetters:
    """Dead letters in a list, kept once per source and content (the same input refused again later
    counted on its entry, a redelivery of one refusal not), like the SQL store."""

    def __init__(self) -> None:
        self.kept: list[Json] = []
        self._by_key: dict[str, Json] = {}

    def keep(self, *, received_at: datetime, source: str, origin: str, reason: Json, payload: bytes) -> None:
        digest = input_digest(reason, payload)
        key = content_key(source, digest)
        held = self._by_key.get(key)
        if held is not None:  # (counted only when later than any counted, as the SQL store)
            if received_at > held["latest"]:
                held["latest"] = received_at
                held["refused_times"] += 1
            return
        entry = {
            "received_at": received_at,
            "source": source,
            "origin": origin,
            "reason": reason,
            "payload": payload,
            "digest": digest,
            "refused_times": 1,
            "latest": received_at,
        }
        self._by_key[key] = entry
        self.kept.append(entry)

    def holds(self, *, source: str, payload: bytes) -> bool:
        digest = hashlib.sha256(payload).hexdigest()
        return any(k["source"] == source and k["digest"] == digest for k in self.kept)

    def recent(self, limit: int) -> list[Json]:
        return list(reversed(self.kept))[:limit]


class MemoryLedger:
    """The disclosure ledger in a list, with the same chain as SqlLedger."""

    def __init__(self) -> None:
        self.rows: list[Entry] = []
        self.once: set[str] = set()

    def append(self, disclosures: Sequence[Disclosure], *, once: str | None = None) -> bool:
        if not disclosures:
            return True
        if once is not None:
            if once in self.once:
                return False
            self.once.add(once)
        bodies = [d.body() for d in disclosures]
        sealed = seal([self.rows[-1].hash] if self.rows else [], bodies)
        for body, (prev, digest) in zip(bodies, sealed, strict=True):
            self.rows.append(Entry(len(self.rows) + 1, body, prev, digest))
        return True

    def entries(self) -> Iterator[Entry]:
        return iter(list(self.rows))

    def about(self, *person_keys: str) -> list[Entry]:
        return [e for e in self.rows if e.body.get("person_key") in person_keys]


class MemoryCoordinationStore:
    """The coordination port in memory, for unit tests; commit replaces the store's state."""

    def __init__(self) -> None:
        self.states: dict[str, Json] = {}
        self.clocks: dict[str, tuple[str, datetime, str, int]] = {}
        self.done: set[str] = set()

    def unit_of_work(self) -> MemoryCoordinationUnitOfWork:
        return MemoryCoordinationUnitOfWork(self)


class MemoryCoordinationUnitOfWork:
    """Changes kept aside until commit, as a transaction would."""

    def __init__(self, store: MemoryCoordinationStore) -> None:
        self._store = store
        self._states = copy.deepcopy(store.states)
        self._clocks = dict(store.clocks)
        self._done = set(store.done)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        return None

    def processed(self, event_ids: Collection[str]) -> set[str]:
        return {e for e in event_ids if e in self._done}

    def mark_processed(self, event_id: str) -> None:
        self._done.add(event_id)

    def state(self, person_key: str) -> Json | None:
        found = self._states.get(person_key)
        return copy.deepcopy(found) if found is not None else None

    def save(self, person_key: str, state: Json) -> None:
        self._states[person_key] = copy.deepcopy(state)

    def set_clock(self, clock_id: str, person_key: str, due: datetime, kind: str, partition: int) -> None:
        self._clocks[clock_id] = (person_key, due, kind, partition)

    def clear_clock(self, clock_id: str) -> None:
        self._clocks.pop(clock_id, None)

    def due_clocks(self, partition: int, until: datetime) -> list[tuple[str, str, datetime, str]]:
        due = [(c, p, d, k) for c, (p, d, k, part) in self._clocks.items() if part == partition and d <= until]
        return sorted(due, key=lambda c: (c[2], c[0]))

    def commit(self) -> None:
        self._store.states, self._store.clocks, self._store.done = self._states, self._clocks, self._done


class MemoryRegistrations:
    """Whom each person is registered with (hub.store.registrations, whose rules it shares), in a dict."""

    def __init__(self) -> None:
        self.held: dict[str, tuple[Registration, dict[str, Any]]] = {}

    def of(self, person_keys: Collection[str], starts: Mapping[int, int] | None = None) -> dict[str, Registration]:
        found: dict[str, Registration] = {}
        for key in person_keys:
            if key in self.held:
                now, snapshots = self.held[key]
                seen = as_of(now, snapshots, starts or {})
                if seen is not None:
                    found[key] = seen
        return found

    def save(
        self,
        registrations: Mapping[str, Registration],
        before: Mapping[str, Registration | None],
        starts: Mapping[int, int] | None = None,
        revived: Collection[str] = (),
    ) -> None:
        for key, registration in registrations.items():
            stored, snapshots = self.held.get(key, (None, {}))
            was = before.get(key)
            kept = kept_over(stored, registration, was, key in revived)
            self.held[key] = (kept, snapshots_after(snapshots, starts or {}, was))
