"""Whom each person is registered with, as the delivery consumer read it in log order (the rules
are hub.core.delivery's; this keeps what they decided).

Each row also keeps what it was before the batch that last changed it (`before`), and where on the
log the event that changed it is (partition, offset): a batch redone (the consumer stopped after
saving it, before its offsets were committed, or its partitions moved to another consumer) starts at
or before that offset, and reads the row as it was before, so the redone batch decides as the first
run did, not by the registration the batch itself left. (By position, not by event id: the same
event sent twice, as a retransmitted HL7 message is, is two records, and the second no redo.)"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from hub.core.delivery import Registration
from hub.store.sql import _insert, store_errors
from hub.store.tables import person_registration

R = person_registration
_CHUNK = 500  # person keys in one IN (...)
_COLUMNS = ("practices", "event_time", "event_id", "merged_into", "log_partition", "log_offset", "before")
Position = tuple[int, int]  # (partition, offset) on the events topic


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


def _merged(registration: Registration | None) -> bool:
    return registration is not None and registration.merged_into is not None


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
                    first = starts.get(row.log_partition) if row.log_partition is not None else None
                    if first is not None and row.log_offset is not None and row.log_offset >= first:
                        before = _from_json(row.before)
                        if before is not None:
                            found[row.person_key] = before
                        continue
                    found[row.person_key] = Registration(
                        frozenset(row.practices), row.event_time, row.event_id, row.merged_into
                    )
        return found

    def save(
        self,
        registrations: Mapping[str, Registration],
        before: Mapping[str, Registration | None],
        positions: Mapping[str, Position] | None = None,
    ) -> None:
        """Keep these registrations, each with what it was before this batch (`before`) and where the
        event that changed it is on the log (`positions`, where known)."""
        positions = positions or {}
        if not registrations:
            return
        rows = [
            {
                "person_key": person,
                "practices": sorted(r.practices),
                "event_time": r.event_time,
                "event_id": r.event_id,
                "merged_into": r.merged_into,
                "log_partition": positions[person][0] if person in positions else None,
                "log_offset": positions[person][1] if person in positions else None,
                "before": _as_json(before.get(person)),
            }
            for person, r in sorted(registrations.items())
        ]
        # a merge another worker kept meanwhile (the survivor's partition, read by another consumer)
        # stays, unless this batch itself reversed one it had read: a person merged away never
        # becomes their own again by a batch that read them before the merge
        reversed_ = {p for p, r in registrations.items() if r.merged_into is None and _merged(before.get(p))}
        with store_errors(), self.engine.connect().execution_options(immediate=True) as conn:
            conn.begin()
            for reversing in (False, True):
                chosen = [row for row in rows if (row["person_key"] in reversed_) is reversing]
                if not chosen:
                    continue
                stmt = _insert(conn, R)
                set_ = {c: stmt.excluded[c] for c in _COLUMNS}
                if not reversing:
                    set_["merged_into"] = sa.func.coalesce(stmt.excluded.merged_into, R.c.merged_into)
                conn.execute(stmt.on_conflict_do_update(index_elements=[R.c.person_key], set_=set_), chosen)
            conn.commit()
