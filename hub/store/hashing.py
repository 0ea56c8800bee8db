"""`carehub record hash`: one canonical hash of a record database, so two databases built from the
same events (live and replayed, interrupted and not) can be compared without reading them."""

from __future__ import annotations

import hashlib
import json

import sqlalchemy as sa

from hub.store.sql import store_errors
from hub.store.tables import processed_event, record_resource

R = record_resource


def record_hash(engine: sa.Engine) -> tuple[str, int, int]:
    """(sha256 hex, resources, processed events) over every current resource and applied event id."""
    digest = hashlib.sha256()
    resources = events = 0
    query = sa.select(R.c.resource_type, R.c.id, R.c.person_key, R.c.version_id, R.c.content).order_by(
        R.c.resource_type, R.c.id
    )
    with store_errors(), engine.connect() as conn:
        for kind, rid, person, version, content in conn.execute(query):
            line = json.dumps([kind, rid, person, version, content], sort_keys=True, separators=(",", ":"))
            digest.update(line.encode() + b"\n")
            resources += 1
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
