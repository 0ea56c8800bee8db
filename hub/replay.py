"""`carehub replay`: rebuild the shared care record from the Kafka log into a fresh database.

Deterministic: the record's rules take time from events, never the wall clock, and shared
reference data does not depend on the order partitions are read in, so a replay of the same log
hashes the same as the live record (`carehub record hash`). Fast: envelopes are read from headers
without pydantic, payloads parsed with orjson and folded as plain dicts in memory (never
re-validated with fhir.resources: they were validated once, where they entered), and the final
state is written in bulk.

The log is read without a consumer group (partitions assigned, from the beginning, up to the high
watermark each fetch reports), so a replay never disturbs the live consumers' offsets.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, Self

import orjson
import sqlalchemy as sa
from aiokafka import AIOKafkaConsumer, TopicPartition

from hub.core.ports import RecordEvent, StoredResource
from hub.core.record import apply_events
from hub.store.sql import _insert, identifiers_of
from hub.store.tables import processed_event, record_identifier, record_resource
from schemas.topics import EVENTS

Progress = Callable[[int, int], None]  # (events read, events expected)


class FoldUnitOfWork:
    """The record port over plain dicts, for one long fold: no copies, no transaction."""

    def __init__(self) -> None:
        self.resources: dict[tuple[str, str], StoredResource] = {}
        self.by_person: dict[str, set[tuple[str, str]]] = {}
        self.done: set[str] = set()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        return None

    def processed(self, event_ids: Collection[str]) -> set[str]:
        return {e for e in event_ids if e in self.done}

    def get(self, resource_type: str, id: str) -> StoredResource | None:
        return self.resources.get((resource_type, id))

    def find_by_identifier(self, resource_type: str, system: str, value: str) -> list[StoredResource]:
        return [
            r
            for (kind, _), r in self.resources.items()
            if kind == resource_type and (system, value) in identifiers_of(r.content)
        ]

    def of_person(self, person_key: str) -> list[StoredResource]:
        return sorted(
            (self.resources[k] for k in self.by_person.get(person_key, ())), key=lambda r: (r.resource_type, r.id)
        )

    def put(self, resource: StoredResource) -> None:
        key = (resource.resource_type, resource.id)
        old = self.resources.get(key)
        if old is not None and old.person_key and old.person_key != resource.person_key:
            self.by_person[old.person_key].discard(key)
        self.resources[key] = resource
        if resource.person_key:
            self.by_person.setdefault(resource.person_key, set()).add(key)

    def mark_processed(self, event_id: str) -> None:
        self.done.add(event_id)

    def commit(self) -> None:
        return None


def _event(record: Any) -> RecordEvent | None:
    headers = {k: v for k, v in record.headers}
    try:
        return RecordEvent(
            id=headers["ce_id"].decode(),
            type=headers["ce_type"].decode(),
            source=headers["ce_source"].decode(),
            time=datetime.fromisoformat(headers["ce_time"].decode()),
            subject=headers["ce_subject"].decode(),
            payload=orjson.loads(record.value),
        )
    except (KeyError, ValueError):
        return None  # not a CareHub event: the live consumer dead-lettered it; so does replay


async def read_log(bootstrap: str, *, batch: int = 5000, idle_ms: int = 1000) -> AsyncIterator[list[Any]]:
    """Every record on the events topic, partition by partition as fetched, up to the high watermark."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(EVENTS.name, p) for p in sorted(consumer.partitions_for_topic(EVENTS.name) or [])]
        if not partitions:
            await consumer.topics()
            partitions = [
                TopicPartition(EVENTS.name, p) for p in sorted(consumer.partitions_for_topic(EVENTS.name) or [])
            ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        while True:
            fetched = await consumer.getmany(timeout_ms=idle_ms, max_records=batch)
            for tp in sorted(fetched, key=lambda t: t.partition):
                yield fetched[tp]
            if await _at_end(consumer, partitions):
                return
    finally:
        await consumer.stop()


async def _at_end(consumer: AIOKafkaConsumer, partitions: list[TopicPartition]) -> bool:
    """True once every partition's position has reached the high watermark its fetches reported."""
    for tp in partitions:
        end = consumer.highwater(tp)
        if end is None or await consumer.position(tp) < end:
            return False
    return True


@dataclass(frozen=True)
class ReplayResult:
    events: int
    applied: int
    skipped: int
    resources: int
    seconds: float


async def replay(
    bootstrap: str,
    engine: sa.Engine,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    progress: Progress | None = None,
) -> ReplayResult:
    """Fold the log (events with since <= time <= until) into memory, then write it to `engine`."""
    started = time.perf_counter()
    fold = FoldUnitOfWork()
    read = applied = skipped = 0
    gc.disable()  # the fold only grows; cyclic GC passes over it cost more than the fold itself
    try:
        read, applied, skipped = await _fold(bootstrap, fold, since, until, progress)
    finally:
        gc.enable()
    await asyncio.to_thread(write, engine, fold)
    return ReplayResult(read, applied, skipped, len(fold.resources), time.perf_counter() - started)


async def _fold(
    bootstrap: str, fold: FoldUnitOfWork, since: datetime | None, until: datetime | None, progress: Progress | None
) -> tuple[int, int, int]:
    read = applied = skipped = 0
    async for records in read_log(bootstrap):
        events = []
        for record in records:
            read += 1
            event = _event(record)
            if event is None:
                skipped += 1
            elif (since is None or event.time >= since) and (until is None or event.time <= until):
                events.append(event)
        applied += apply_events(fold, events).applied
        if progress:
            progress(read, 0)
    return read, applied, skipped


def write(engine: sa.Engine, fold: FoldUnitOfWork, chunk: int = 5000) -> None:
    """The folded record into an empty database, in bulk, in one transaction."""
    resources = [
        {
            "resource_type": r.resource_type,
            "id": r.id,
            "person_key": r.person_key,
            "version_id": r.version_id,
            "event_time": r.event_time,
            "source_event_id": r.source_event_id,
            "content": r.content,
        }
        for r in fold.resources.values()
    ]
    identifiers = [
        {"resource_type": r.resource_type, "resource_id": r.id, "system": s, "value": v}
        for r in fold.resources.values()
        for s, v in sorted(identifiers_of(r.content))
    ]
    processed = [{"consumer": "record", "event_id": e} for e in sorted(fold.done)]
    with engine.connect().execution_options(immediate=True) as conn:
        conn.begin()
        if conn.execute(sa.select(sa.func.count()).select_from(record_resource)).scalar_one():
            raise RuntimeError("replay writes into an empty record; this database already holds one")
        for table, rows in (
            (record_resource, resources),
            (record_identifier, identifiers),
            (processed_event, processed),
        ):
            stmt = _insert(conn, table)
            for start in range(0, len(rows), chunk):
                conn.execute(stmt, rows[start : start + chunk])
        conn.commit()
