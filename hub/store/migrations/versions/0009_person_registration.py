"""Whom each person is registered with, kept by the delivery consumer in log order (an A03 without PD1
still reaches the practice of a `registered` subscription).

Filled at once from the record's Patients, so that people the hub already knows keep reaching their
practice: each one's generalPractitioner (by ODS code, or by reference to a practice the record
holds), a Patient merged away as merged into its survivor, none from a Patient only a referral or
register row introduced. As the record stood at the upgrade, which a delivery consumer behind the
record consumer may not have read to yet (it takes its events on from there, in log order); and as
the record's Patient says, which may differ from what the delivery consumer would have kept had it
read every event (the record's Patient goes by its latest write, the registration by the latest
event to name a practice; another sender's Patient replaces the record's whole). The rules of
hub.core.delivery as they stood in this revision, written out here so that a later change to them
does not change what this migration did.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op

from hub.store.tables import JsonColumn, UtcDateTime

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_ODS = "https://fhir.nhs.uk/Id/ods-organization-code"
_STUB_TIME = datetime(1900, 1, 1, tzinfo=UTC)  # how the record times a Patient only a referral introduced
_BATCH = 1000


def upgrade() -> None:
    table = op.create_table(
        "person_registration",
        sa.Column("person_key", sa.String(64), primary_key=True),
        sa.Column("practices", JsonColumn, nullable=False),
        sa.Column("event_time", UtcDateTime, nullable=False),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("merged_into", sa.String(64), nullable=True),
        sa.Column("before", JsonColumn, nullable=True),
    )
    conn = op.get_bind()
    rows: list[dict[str, Any]] = []
    for row in _registrations(conn):
        rows.append(row)
        if len(rows) == _BATCH:
            conn.execute(sa.insert(table), rows)
            rows = []
    if rows:
        conn.execute(sa.insert(table), rows)


def _registrations(conn: sa.Connection) -> Iterator[dict[str, Any]]:
    resource = sa.table(
        "record_resource",
        sa.column("resource_type", sa.String),
        sa.column("id", sa.String),
        sa.column("event_time", UtcDateTime),
        sa.column("source_event_id", sa.String),
        sa.column("content", JsonColumn),
    )
    practices: dict[str, set[str]] = {}
    query = sa.select(resource.c.id, resource.c.content).where(resource.c.resource_type == "Organization")
    for rid, content in conn.execute(query):
        practices[f"Organization/{rid}"] = {
            str(i.get("value")) for i in _dicts(content.get("identifier")) if i.get("system") == _ODS and i.get("value")
        }
    query = sa.select(resource.c.id, resource.c.event_time, resource.c.source_event_id, resource.c.content).where(
        resource.c.resource_type == "Patient"
    )
    row: Any
    for row in conn.execute(query.execution_options(yield_per=_BATCH)):
        rid, at, event_id, content = row
        at = at if at.tzinfo else at.replace(tzinfo=UTC)
        row_of = {"person_key": rid, "event_time": at, "event_id": event_id, "merged_into": None}
        survivor = next(
            (
                str(other["reference"]).removeprefix("Patient/")
                for link in _dicts(content.get("link"))
                if link.get("type") == "replaced-by"
                and isinstance(other := link.get("other"), dict)
                and str(other.get("reference", "")).startswith("Patient/")
            ),
            None,
        )
        if survivor is not None:
            yield row_of | {"practices": [], "merged_into": survivor}
            continue
        if at <= _STUB_TIME:
            continue  # only a referral or register row introduced them: that registers no one
        codes: set[str] = set()
        for gp in _dicts(content.get("generalPractitioner")):
            codes |= practices.get(str(gp.get("reference")), set())
            ident = gp.get("identifier")
            if isinstance(ident, dict) and ident.get("system") == _ODS and ident.get("value"):
                codes.add(str(ident["value"]))
        if codes:
            yield row_of | {"practices": sorted(codes)}


def _dicts(items: Any) -> list[dict[str, Any]]:
    """The objects of a JSON list (none of anything else: the record keeps what senders said)."""
    return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []


def downgrade() -> None:
    op.drop_table("person_registration")
