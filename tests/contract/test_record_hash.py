"""`carehub record hash` covers every column of the record, and is the same on SQLite and PostgreSQL.

A replayed record is only as trustworthy as the hash that says it equals the live one: a hash that
left out event times, source events or the identifier index would call two records equal when the
next event would change them differently (event times decide what is stale) or when a lookup by NHS
number would find different people.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
import sqlalchemy as sa

from hub.core.ports import RecordEvent
from hub.core.record import apply_events
from hub.store.database import open_engine
from hub.store.hashing import record_hash
from hub.store.sql import SqlRecordUnitOfWork
from hub.store.tables import processed_event, record_identifier, record_resource
from tests.conftest import fresh_postgres
from tests.integration.test_crash_safety import the_events

R, I = record_resource, record_identifier  # noqa: E741
EVENTS = the_events(60)
# ids that a language's collation sorts otherwise than their bytes do ("a-c" after "ab" in en-GB)
PUNCTUATED = [
    RecordEvent(
        f"sorting-{n}",
        EVENTS[0].type,
        EVENTS[0].source,
        EVENTS[0].time,
        pid,
        {"resourceType": "Patient", "id": pid, "identifier": [{"system": "urn:test", "value": pid}]},
    )
    for n, pid in enumerate(["p-c", "pb", "p_a", "pA"])
]


def a_record(url: str) -> sa.Engine:
    engine = open_engine(url)
    with SqlRecordUnitOfWork(engine) as uow:
        apply_events(uow, [*EVENTS, *PUNCTUATED])
        uow.commit()
    return engine


@pytest.fixture
def postgres_in_english(postgres_admin_url: str) -> Iterator[str]:
    """A fresh PostgreSQL database whose text sorts by the en-GB collation (ICU), not by bytes."""
    with fresh_postgres(postgres_admin_url, options="TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-GB'") as url:
        yield url


@pytest.mark.postgres
@pytest.mark.parametrize("collation", ["bytes", "en-GB"])
def test_the_same_events_hash_the_same_on_sqlite_and_postgresql(
    sqlite_url: str, request: pytest.FixtureRequest, collation: str
) -> None:
    url = request.getfixturevalue("postgres_url" if collation == "bytes" else "postgres_in_english")
    sqlite, postgres = a_record(sqlite_url), a_record(url)
    try:
        if collation != "bytes":  # (so the database does sort these ids otherwise than SQLite)
            with postgres.connect() as conn:
                ids = conn.execute(sa.text("SELECT id FROM record_resource WHERE id LIKE 'p%' ORDER BY id"))
                assert [i for (i,) in ids] != sorted(e.subject for e in PUNCTUATED)
        found = record_hash(sqlite)
        assert found == record_hash(postgres)
        assert found[1] > len(EVENTS) and found[2] == len(EVENTS) + len(PUNCTUATED)
    finally:
        sqlite.dispose()
        postgres.dispose()


def _one(engine: sa.Engine, kind: str) -> tuple[str, str]:
    with engine.connect() as conn:
        row = conn.execute(sa.select(R.c.resource_type, R.c.id).where(R.c.resource_type == kind).limit(1)).one()
    return row[0], row[1]


TAMPERING: dict[str, Callable[[sa.Engine], sa.Executable]] = {
    "an event time": lambda engine: (
        sa.update(R)
        .where(R.c.resource_type == "Encounter", R.c.id == _one(engine, "Encounter")[1])
        .values(event_time=EVENTS[0].time - timedelta(days=400))
    ),
    "a source event": lambda engine: (
        sa.update(R)
        .where(R.c.resource_type == "Patient", R.c.id == _one(engine, "Patient")[1])
        .values(source_event_id="someone-else")
    ),
    "an identifier": lambda engine: sa.delete(I).where(
        I.c.resource_type == "Patient", I.c.resource_id == _one(engine, "Patient")[1]
    ),
    "a person key": lambda engine: (
        sa.update(R)
        .where(R.c.resource_type == "Encounter", R.c.id == _one(engine, "Encounter")[1])
        .values(person_key="somebody")
    ),
    "a version": lambda engine: (
        sa.update(R)
        .where(R.c.resource_type == "Encounter", R.c.id == _one(engine, "Encounter")[1])
        .values(version_id=R.c.version_id + 1)
    ),
    "an applied event": lambda engine: sa.delete(processed_event).where(processed_event.c.event_id == EVENTS[0].id),
}


@pytest.mark.parametrize("change", sorted(TAMPERING))
def test_any_change_to_the_record_changes_its_hash(change: str, sqlite_url: str) -> None:
    engine = a_record(sqlite_url)
    try:
        before = record_hash(engine)
        assert record_hash(engine) == before  # (stable, so a difference below is the change's)
        with engine.begin() as conn:
            assert conn.execute(TAMPERING[change](engine)).rowcount >= 1
        assert record_hash(engine)[0] != before[0], f"changing {change} left the hash as it was"
    finally:
        engine.dispose()
