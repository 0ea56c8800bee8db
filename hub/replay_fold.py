"""The record a replay folds the log into (hub.replay): the record port over plain dicts, in memory,
each resource held as the row the bulk write (hub.replay_write) stores."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection
from types import TracebackType
from typing import Final, Self

import orjson

from hub.core.ports import StoredResource
from hub.core.record_content import replaced_by
from hub.replay_write import _bind, _Memo, sqlite_dialect, time_of
from hub.store.sql import identifiers_of
from hub.store.tables import record_resource

Key = tuple[str, str]  # (resource type, id)
Row = tuple[str, str, str | None, int, str, str, str]  # a resource as SQLite's record_resource holds it
_PERSON: Final = 2  # where a Row holds the person key
_TIME: Final = 4  # the event time, as SQLite holds it (UTC, no offset: see time_of)
_EVENT: Final = 5  # the source event's id
_TEXT: Final = 6  # and the JSON text
_TEXT_ONLY = frozenset({"Provenance"})  # kinds a fold holds as text only (see FoldUnitOfWork)
_RECENT = 32_768  # resources a fold holds parsed, in each of its two generations (see FoldUnitOfWork)


class FoldUnitOfWork:
    """The record port over plain dicts, for one long fold: no copies, no transaction.

    Each resource is held as its row: the StoredResource's fields and its JSON text, made when it is
    put, while its content is still in the CPU's caches (made at write time, a million contents
    scattered over gigabytes of memory cost many times more to read than to serialise). The rules
    read content back as dicts: the resources put or read lately are held parsed too, in two
    generations of up to _RECENT each (a person's events come close together in the log, so the
    rules nearly always find what they read there); anything older is parsed from its text again
    when read, and Provenances (one for nearly every event, read again only by a merge) always are.
    Memory is what a long fold spends its time on: first touching it cost ~2 s of system time per
    GB on the VMs this was measured on, and parsed content takes about three times the memory of
    its text. Holding every resource parsed, a worker folding 500,000 events held 3.2 GB; holding
    the recent ones, 1.8 GB.
    """

    def __init__(self) -> None:
        # text as str, not as orjson's bytes: orjson.dumps returns its whole working buffer (~8 KiB,
        # whatever the text's length), and a fold keeps millions of them
        self.rows: dict[Key, Row] = {}
        self.identifiers: dict[Key, list[tuple[str, str, str, str]]] = {}  # record_identifier rows
        self.ids: defaultdict[str, list[str]] = defaultdict(list)  # each type's ids, in the order first put
        self.by_person: defaultdict[str, set[Key]] = defaultdict(set)  # (no empty set made a put)
        self.done: set[str] = set()
        self.merged_away: set[str] = set()  # every person a merge moved resources from (see of_person)
        self.retired: set[str] = set()  # every Patient whose content says who replaced them
        self._parsed: dict[Key, StoredResource] = {}  # resources lately put or read, parsed (see _RECENT)
        self._older: dict[Key, StoredResource] = {}  # the generation before
        self._touched: set[str] | None = None  # where a fold notes the people each put touches
        # event times as SQLite holds them (an event stamps several resources, and events share times;
        # forgotten every _RECENT times, so a log of distinct times does not grow it without end)
        self._at = _Memo(_bind(record_resource.c.event_time, sqlite_dialect()), most=_RECENT)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        return None

    def processed(self, event_ids: Collection[str]) -> set[str]:
        return {e for e in event_ids if e in self.done}

    def get(self, resource_type: str, id: str) -> StoredResource | None:
        key = (resource_type, id)
        found = self._parsed.get(key)
        if found is None:
            found = self._older.get(key)
            if found is None:
                row = self.rows.get(key)
                if row is None:
                    return None
                found = StoredResource(*row[:_TIME], time_of(row[_TIME]), row[_EVENT], orjson.loads(row[_TEXT]))
                if resource_type in _TEXT_ONLY:
                    return found
            self._keep(key, found)
        return found

    def _keep(self, key: Key, resource: StoredResource) -> None:
        parsed = self._parsed
        parsed[key] = resource
        if len(parsed) >= _RECENT:  # a generation full: the one before it is let go
            self._older, self._parsed = parsed, {}

    def find_by_identifier(self, resource_type: str, system: str, value: str) -> list[StoredResource]:
        found = [
            key
            for key, held in self.identifiers.items()
            if key[0] == resource_type and any(row[2:] == (system, value) for row in held)
        ]
        return [r for r in (self.get(*key) for key in found) if r is not None]

    def of_person(self, person_key: str, kind: str | None = None) -> list[StoredResource]:
        # only a merge asks for all of a person's resources: remember whom, whatever the merge's own
        # Patient write then does (it may be stale, or a later merge may make them a survivor); the
        # rules ask for one kind (the person's EpisodeOfCare, when a stay opens), which is no merge
        if kind is None:
            self.merged_away.add(person_key)
        held = self.by_person.get(person_key, ())
        found = (self.get(*key) for key in sorted(held) if kind in (None, key[0]))
        return [r for r in found if r is not None]

    def put(self, resource: StoredResource) -> None:
        kind, rid, person = resource.resource_type, resource.id, resource.person_key
        key = (kind, rid)
        old = self.rows.get(key)
        touched = self._touched
        if touched is not None:  # (here, not in an override: one call and one lookup fewer a put)
            if person:
                touched.add(person)
            if old is not None and old[_PERSON] and old[_PERSON] != person:
                touched.add(old[_PERSON])
        content = resource.content
        held = self._parsed.get(key) or self._older.get(key)
        if old is not None and held is not None and held.content is content:
            text = old[_TEXT]  # the same content again (stored content is never changed in place)
        else:
            text = orjson.dumps(content).decode()
            if "identifier" in content:
                self.identifiers[key] = [(kind, rid, s, v) for s, v in sorted(identifiers_of(content))]
            elif old is not None:
                self.identifiers.pop(key, None)
            if kind == "Patient":
                if "link" in content and replaced_by(content):
                    self.retired.add(rid)
                else:
                    self.retired.discard(rid)
        at = self._at[resource.event_time]
        self.rows[key] = (kind, rid, person, resource.version_id, at, resource.source_event_id, text)
        if kind not in _TEXT_ONLY:
            self._keep(key, resource)
        if old is None:
            self.ids[kind].append(rid)
        elif old[_PERSON] == person:
            return  # filed where it was: the common case, a new version of the same resource
        if old is not None and old[_PERSON]:
            self.by_person[old[_PERSON]].discard(key)
        if person:
            self.by_person[person].add(key)

    def mark_processed(self, event_id: str) -> None:
        self.done.add(event_id)

    def commit(self) -> None:
        return None
