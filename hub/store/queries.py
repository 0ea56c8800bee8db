"""The read side for the command line (cosmicpython's views.py): what an operator is shown of the
dead-letter store, read straight from its table, newest first (outstanding only, or all) or one entry
by its id, with what was done about it (hub.store.dead_letter_status)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from hub.core.ports import Json
from hub.store.sql import store_errors
from hub.store.tables import dead_letter

# A listing reads each entry's first 64 KiB, which hold an HL7 message's MSH or a file's row; an
# entry can be a whole file (an opt-out list) of megabytes, and a listing shows only what names it.
HEAD = 64 * 1024


@dataclass(frozen=True)
class Resolution:
    """What was done about one dead letter, and when and by whom."""

    at: datetime
    by: str
    note: str


@dataclass(frozen=True)
class KeptDeadLetter:
    """One dead letter as the store keeps it: its content whole, or (in a listing) its first HEAD bytes."""

    id: int
    received_at: datetime
    source: str
    origin: str
    digest: str
    reason: Json
    size: int
    content: bytes
    resolution: Resolution | None = None  # None while outstanding
    refused_times: int = 1  # the same input refused again is counted on its entry
    last_received_at: datetime | None = None  # when it last came, if more than once


def recent_dead_letters(
    engine: sa.Engine, limit: int, *, resolved_too: bool = False, source: str | None = None
) -> list[KeptDeadLetter]:
    """The newest `limit` outstanding dead letters (and resolved ones too if asked; from one source
    if asked, `urn:ods:CODE` or the code alone), newest first, each with the head of its content."""
    D = dead_letter  # noqa: N806
    head = sa.func.substr(D.c.payload, 1, HEAD).label("payload")
    query = sa.select(*_shown(), head).order_by(D.c.id.desc()).limit(limit)
    if not resolved_too:
        query = query.where(D.c.resolved_at.is_(None))
    if source:
        said = source.strip()
        query = query.where(sa.func.upper(D.c.source).in_({said.upper(), f"URN:ODS:{said.upper()}"}))
    with store_errors(), engine.connect() as conn:
        return [_letter(row) for row in conn.execute(query)]


def dead_letter_by_id(engine: sa.Engine, id_: int) -> KeptDeadLetter | None:
    """One dead letter with its content whole, or None if the store holds none by that id."""
    query = sa.select(*_shown(), dead_letter.c.payload).where(dead_letter.c.id == id_)
    with store_errors(), engine.connect() as conn:
        row = conn.execute(query).first()
    return _letter(row) if row is not None else None


def _shown() -> list[sa.ColumnElement[Any]]:
    D = dead_letter  # noqa: N806
    size = sa.func.length(D.c.payload).label("size")
    resolved = [D.c.resolved_at, D.c.resolved_by, D.c.resolution, D.c.refused_times, D.c.last_received_at]
    return [D.c.id, D.c.received_at, D.c.source, D.c.origin, D.c.digest, D.c.reason, size, *resolved]


def _letter(row: Any) -> KeptDeadLetter:  # (a row of _shown() and the payload)
    return KeptDeadLetter(
        id=row.id,
        received_at=row.received_at,
        source=row.source,
        origin=row.origin,
        digest=row.digest,
        reason=row.reason if isinstance(row.reason, dict) else {},
        size=int(row.size or 0),
        content=bytes(row.payload or b""),
        resolution=(
            Resolution(row.resolved_at, row.resolved_by or "", row.resolution or "")
            if row.resolved_at is not None
            else None
        ),
        refused_times=int(row.refused_times or 1),
        last_received_at=row.last_received_at,
    )
