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
    found by, and every applied event id. Event times are hashed as UTC, so a record on PostgreSQL
    and one on SQLite built from the same events hash the same."""
    digest = hashlib.sha256()
    resources = events = 0
    query = sa.select(
        R.c.resource_type, R.c.id, R.c.person_key, R.c.version_id, R.c.event_time, R.c.source_event_id, R.c.content
    ).order_by(R.c.resource_type, R.c.id)
    with store_errors(), engine.connect() as conn:
        for kind, rid, person, version, at, event, content in conn.execute(query):
            when = at.astimezone(UTC).isoformat()
            line = json.dumps([kind, rid, person, version, when, event, content], sort_keys=True, separators=(",", ":"))
            digest.update(line.encode() + b"\n")
            resources += 1
        digest.update(b"--identifiers--\n")
        columns = [record_identifier.c[name] for name in ("resource_type", "resource_id", "system", "value")]
        found = conn.execute(sa.select(*columns).order_by(*columns))
        for row in found:
            digest.update(json.dumps(list(row), separators=(",", ":")).encode() + b"\n")
        digest.update(b"--processed--\n")
        ids = conn.execute(
            sa.select(processed_event.c.consumer, processed_event.c.event_id)
            .where(processed_event.c.consumer == "record")  # other consumers' bookkeeping is not the record
            .order_by(processed_event.c.consumer, processed_event.c.event_id)
        )
        for consumer, event_id in ids:
            digest.update(f"{consumer}|{event_id}\n".encode())
            events += 1
    return digest.hexdigest(), resources, events
