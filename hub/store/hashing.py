"""`carehub record hash`: one canonical hash of a record database, so two databases built from the
same events (live and replayed, interrupted and not) can be compared without reading them."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC

import sqlalchemy as sa

from hub.store.sql import store_errors
from hub.store.tables import processed_event, record_identifier, record_resource

R = record_resource


def record_hash(engine: sa.Engine) -> tuple[str, int, int]:
    """(sha256 hex, resources, processed events) over every column of the record: each current
    resource (its person, version, event time, source event and content), the identifiers it is
    found by, and every applied event id. Event times are hashed as UTC and rows taken in the byte
    order of their keys, so a record on PostgreSQL (whatever its collation) and one on SQLite built
    from the same events hash the same."""
    digest = hashlib.sha256()
    resources = events = 0
    with store_errors(), engine.connect() as conn:
        query = sa.select(
            R.c.resource_type, R.c.id, R.c.person_key, R.c.version_id, R.c.event_time, R.c.source_event_id, R.c.content
        ).order_by(*_by_bytes(conn, R.c.resource_type, R.c.id))
        for kind, rid, person, version, at, event, content in conn.execute(query):
            when = at.astimezone(UTC).isoformat()
            line = json.dumps([kind, rid, person, version, when, event, content], sort_keys=True, separators=(",", ":"))
            digest.update(line.encode() + b"\n")
            resources += 1
        digest.update(b"--identifiers--\n")
        columns = [record_identifier.c[name] for name in ("resource_type", "resource_id", "system", "value")]
        found = conn.execute(sa.select(*columns).order_by(*_by_bytes(conn, *columns)))
        for row in found:
            digest.update(json.dumps(list(row), separators=(",", ":")).encode() + b"\n")
        digest.update(b"--processed--\n")
        ids = conn.execute(
            sa.select(processed_event.c.consumer, processed_event.c.event_id)
            .where(processed_event.c.consumer == "record")  # other consumers' bookkeeping is not the record
            .order_by(*_by_bytes(conn, processed_event.c.consumer, processed_event.c.event_id))
        )
        for consumer, event_id in ids:
            digest.update(f"{consumer}|{event_id}\n".encode())
            events += 1
    return digest.hexdigest(), resources, events


def _by_bytes(conn: sa.Connection, *columns: sa.ColumnElement[str]) -> list[sa.ColumnElement[str]]:
    """Text columns to sort by as SQLite sorts them (by their bytes), whatever collation a PostgreSQL
    database was made with: a database with a language's collation (en_GB, say) sorts "a-c" after
    "ab", and the hash would then depend on where the record is kept."""
    if conn.dialect.name == "postgresql":
        return [column.collate("C") for column in columns]
    return list(columns)
