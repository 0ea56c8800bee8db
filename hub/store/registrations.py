"""Whom each person is registered with, as the delivery consumer read it in log order (the rules
are hub.core.delivery's; this keeps what they decided).

Each row also keeps, for each partition of the batches that changed it, what it was before the last
such batch and where that batch began on the partition (`before`: {partition: {offset, seq,
before}}, seq counting the row's saves). A batch redone (the consumer stopped after saving it,
before its offsets were committed, or its partitions moved to other consumers) begins at that offset
again on any of those partitions, and reads the row as it was before the earliest saved batch it
redoes, so it decides as the first run did, not by the registration that run left, whichever of the
batch's partitions the change came from (a merge, on the survivor's partition, beside the retired
person's own events). (By position, not by event id: the same event sent twice, as a retransmitted
HL7 message is, is two records, and the second no redo.)"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from hub.core.delivery import Registration
from hub.store.sql import _insert, store_errors
from hub.store.tables import person_registration

R = person_registration
_CHUNK = 500  # person keys in one IN (...)
_COLUMNS = ("practices", "event_time", "event_id", "merged_into", "before")


def _as_json(registration: Registration | None) -> dict[str, Any] | None:
    if registration is None:
        return None
    return {
        "practices": sorted(registration.practices),
        "event_time": registration.event_time.isoformat(),
        "event_id": registration.event_id,
        "merged_into": registration.merged_into,
    }


def _from_json(said: Mapping[str, Any] | None) -> Registration | None:
    if said is None:
        return None
    at = datetime.fromisoformat(str(said["event_time"]))
    return Registration(frozenset(said["practices"]), at, str(said["event_id"]), said.get("merged_into"))


def _registration(row: Any) -> Registration:
    return Registration(frozenset(row.practices), row.event_time, row.event_id, row.merged_into)


def as_of(current: Registration, snapshots: Mapping[str, Any] | None, starts: Mapping[int, int]) -> Registration | None:
    """A row as a batch starting at `starts` (each partition's first offset) reads it: as it stood
    before the earliest save (by seq) of a batch at or after those offsets, if any (None: no row then)."""
    redone = [
        snapshot
        for partition, snapshot in (snapshots or {}).items()
        if int(partition) in starts and int(snapshot["offset"]) >= starts[int(partition)]
    ]
    if not redone:
        return current
    return _from_json(min(redone, key=lambda snapshot: int(snapshot["seq"]))["before"])


def snapshots_after(
    snapshots: Mapping[str, Any] | None, starts: Mapping[int, int], before: Registration | None
) -> dict[str, Any]:
    """A row's snapshots once a batch that began at `starts` (each partition's first offset) has
    changed it, from `before`."""
    kept = dict(snapshots or {})
    seq = 1 + max((int(snapshot["seq"]) for snapshot in kept.values()), default=0)
    for partition, offset in starts.items():
        kept[str(partition)] = {"offset": offset, "seq": seq, "before": _as_json(before)}
    return kept


def kept_over(
    stored: Registration | None, ours: Registration, read: Registration | None, revived: bool = False
) -> Registration:
    """What a batch keeps of a person: its own registration, unless another worker changed the row
    since the batch read it (`read`). Then the newer news by event time, except that a merge kept
    there stays (a person merged away is their survivor's whatever is said of them later, as the
    record keeps them retired) unless this batch reversed it: read them merged and left them not,
    or made them a merge's survivor (`revived`)."""
    if stored is None or stored == read:
        return ours
    reversed_ = revived or (read is not None and read.merged_into is not None and ours.merged_into is None)
    newer = ours if ours.event_time >= stored.event_time else stored
    if stored.merged_into is not None and newer.merged_into is None and not reversed_:
        return dataclasses.replace(newer, merged_into=stored.merged_into)
    return newer


class SqlRegistrations:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def of(self, person_keys: Collection[str], starts: Mapping[int, int] | None = None) -> dict[str, Registration]:
        """The registrations held of these people; a row changed by an event at or after a batch's
        first offset on its partition (`starts`), as it stood before (none, if it had no row then)."""
        keys = sorted(set(person_keys))
        starts = starts or {}
        found: dict[str, Registration] = {}
        with store_errors(), self.engine.connect() as conn:
            for chunk in range(0, len(keys), _CHUNK):
                query = sa.select(R).where(R.c.person_key.in_(keys[chunk : chunk + _CHUNK]))
                for row in conn.execute(query):
                    seen = as_of(_registration(row), row.before, starts)
                    if seen is not None:
                        found[row.person_key] = seen
        return found

    def save(
        self,
        registrations: Mapping[str, Registration],
        before: Mapping[str, Registration | None],
        starts: Mapping[int, int] | None = None,
        revived: Collection[str] = (),
    ) -> None:
        """Keep these registrations, each with what it was before this batch (`before`) and where the
        batch began on each of its partitions (`starts`, where known); `revived`: those the batch made
        a merge's survivor. A row another worker changed since the batch read it (a merge kept from
        the survivor's partition) is decided by kept_over, read under a lock, with both workers'
        snapshots."""
        if not registrations:
            return
        with store_errors(), self.engine.connect().execution_options(immediate=True) as conn:
            conn.begin()
            stored: dict[str, tuple[Registration, Any]] = {}
            keys = sorted(registrations)
            for chunk in range(0, len(keys), _CHUNK):
                query = sa.select(R).where(R.c.person_key.in_(keys[chunk : chunk + _CHUNK])).with_for_update()
                for row in conn.execute(query):
                    stored[row.person_key] = (_registration(row), row.before)
            rows = []
            for person, ours in sorted(registrations.items()):
                theirs, snapshots = stored.get(person, (None, None))
                kept = kept_over(theirs, ours, before.get(person), person in revived)
                rows.append(
                    {
                        "person_key": person,
                        "practices": sorted(kept.practices),
                        "event_time": kept.event_time,
                        "event_id": kept.event_id,
                        "merged_into": kept.merged_into,
                        "before": snapshots_after(snapshots, starts or {}, before.get(person)),
                    }
                )
            stmt = _insert(conn, R)
            stmt = stmt.on_conflict_do_update(
                index_elements=[R.c.person_key], set_={c: stmt.excluded[c] for c in _COLUMNS}
            )
            conn.execute(stmt, rows)
            conn.commit()
