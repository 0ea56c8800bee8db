"""Whom each person is registered with, as the delivery consumer read it in log order (the rules
are hub.core.delivery's; this keeps what they decided)."""

from __future__ import annotations

from collections.abc import Collection

import sqlalchemy as sa

from hub.core.delivery import Registration
from hub.store.sql import _insert, store_errors
from hub.store.tables import person_registration

R = person_registration
_CHUNK = 500  # person keys in one IN (...)


class SqlRegistrations:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def of(self, person_keys: Collection[str]) -> dict[str, Registration]:
        keys = sorted(set(person_keys))
        found: dict[str, Registration] = {}
        with store_errors(), self.engine.connect() as conn:
            for start in range(0, len(keys), _CHUNK):
                query = sa.select(R).where(R.c.person_key.in_(keys[start : start + _CHUNK]))
                for row in conn.execute(query):
                    found[row.person_key] = Registration(
                        frozenset(row.practices), row.event_time, row.event_id, bool(row.stub)
                    )
        return found

    def save(self, registrations: dict[str, Registration]) -> None:
        if not registrations:
            return
        rows = [
            {
                "person_key": person,
                "practices": sorted(r.practices),
                "event_time": r.event_time,
                "event_id": r.event_id,
                "stub": r.stub,
            }
            for person, r in sorted(registrations.items())
        ]
        with store_errors(), self.engine.connect().execution_options(immediate=True) as conn:
            conn.begin()
            stmt = _insert(conn, R)
            stmt = stmt.on_conflict_do_update(
                index_elements=[R.c.person_key],
                set_={c: stmt.excluded[c] for c in ("practices", "event_time", "event_id", "stub")},
            )
            conn.execute(stmt, rows)
            conn.commit()
